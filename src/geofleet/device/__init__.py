"""The device SDK: bootstrap (provision once, keep the key on the device), then a connection
that fails over between regions and comes home (asyncio, with a blocking facade), a QoS 1
outbox, and the shadow helper.

Example::

    from geofleet.device import DeviceClient, DeviceShadow, bootstrap_async

    credentials = await bootstrap_async(device_id, key, group, urls, root_ca, out)
    async with DeviceClient.from_credentials(credentials) as device:
        async with DeviceShadow(device, on_delta=apply) as shadow:
            await shadow.update(reported={"on": True})
        await device.subscribe(f"cmd/{device_id}/#")
        async for message in device.messages:
            ...
"""

from geofleet.device._loop import Message
from geofleet.device.blocking import BlockingDevice
from geofleet.device.bootstrap import Credentials, ProvisioningFailed, bootstrap, bootstrap_async
from geofleet.device.connection import DeviceClient, DeviceStatus, NoEndpointAvailable
from geofleet.device.outbox import DiskOutbox, OutboxFull
from geofleet.device.shadow import DeviceShadow, ShadowRejected
from geofleet.domain.endpoints import Endpoint
from geofleet.domain.failover import FailoverOptions

__all__ = [
    "BlockingDevice", "Credentials", "DeviceClient", "DeviceShadow", "DeviceStatus", "DiskOutbox", "Endpoint",
    "FailoverOptions", "Message", "NoEndpointAvailable", "OutboxFull", "ProvisioningFailed", "ShadowRejected",
    "bootstrap", "bootstrap_async",
]
