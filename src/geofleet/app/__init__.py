"""The application SDK: locate a device, send to it wherever it is connected, read and write its
shadow, and follow one merged stream of telemetry and lifecycle events from every region."""

from geofleet.app.client import DeviceOffline, Event, FleetApp, Location, Region
from geofleet.client import RegionUnreachable

__all__ = ["DeviceOffline", "Event", "FleetApp", "Location", "Region", "RegionUnreachable"]
