"""The device side: bootstrap (provision once, keep the key on the device), then a connection
that fails over between regions and comes home (asyncio, with a blocking facade), a QoS 1
outbox, and the shadow helper."""

from geofleet.device.blocking import BlockingDevice, BlockingShadow
from geofleet.device.bootstrap import Credentials, ProvisioningFailed, bootstrap
from geofleet.device.connection import DeviceClient, Endpoint, FailoverOptions, Move, NoEndpointAvailable
from geofleet.device.outbox import DiskOutbox, MemoryOutbox, OutboxFull
from geofleet.device.shadow import DeviceShadow, ShadowRejected

__all__ = [
    "BlockingDevice", "BlockingShadow", "Credentials", "DeviceClient", "DeviceShadow", "DiskOutbox", "Endpoint",
    "FailoverOptions", "MemoryOutbox", "Move", "NoEndpointAvailable", "OutboxFull", "ProvisioningFailed",
    "ShadowRejected", "bootstrap",
]
