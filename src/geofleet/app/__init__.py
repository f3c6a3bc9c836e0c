"""The application SDK: locate a device, send to it wherever it is connected, read and write its
shadow, and follow one merged stream of telemetry and lifecycle events from every region.

Example::

    from geofleet.app import FleetApp, Region

    async with FleetApp([Region("eu-west-1", "https://eu.example.com:8443")], token, root_ca) as app:
        await app.send("sensor-1", "cmd/sensor-1/reboot", "{}")
        async with app.events(["dt/+/telemetry"]) as stream:
            async for event in stream:
                print(event.region, event.json())
        async with app.consumer("billing", filters=["dt/+/usage"]) as consumer:
            async for message in consumer:  # every region, at least once, from where it left off
                print(message.id, message.json())
"""

from geofleet.app.client import DeviceOffline, FleetApp, Whereabouts
from geofleet.app.consumer import Consumer, Message
from geofleet.app.stream import Event, EventStream, Region
from geofleet.domain.errors import RegionUnreachable

__all__ = ["Consumer", "DeviceOffline", "Event", "EventStream", "FleetApp", "Message", "Region", "RegionUnreachable",
           "Whereabouts"]
