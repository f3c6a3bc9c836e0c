"""The device side: bootstrap (provision once, keep the key on the device)."""

from geofleet.device.bootstrap import Credentials, ProvisioningFailed, bootstrap

__all__ = ["Credentials", "ProvisioningFailed", "bootstrap"]
