"""A plain blocking facade over ``DeviceClient`` for device programs without asyncio.

It runs the asyncio client on an event loop in a background thread; every method blocks until
the loop has done the work. Handlers and delta callbacks run on that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from geofleet.device.bootstrap import Credentials
from geofleet.device.connection import DeviceClient
from geofleet.device.shadow import DeviceShadow
from geofleet.domain.json_types import Json

T = TypeVar("T")


class BlockingDevice:
    """``DeviceClient`` for programs without asyncio: every method blocks until done.

    Example::

        with BlockingDevice(bootstrap(device_id, key, group, urls, root_ca, out)) as device:
            device.publish(f"dt/{device_id}/telemetry", '{"t": 21.5}')
            shadow = device.shadow(on_delta=print)
            shadow.update(reported={"on": True})
    """

    def __init__(self, client: DeviceClient | Credentials, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="geofleet-device", daemon=True)
        self._thread.start()
        if isinstance(client, Credentials):
            credentials = client

            async def make() -> DeviceClient:
                return DeviceClient.from_credentials(credentials, **kwargs)

            client = self._run(make(), 10.0)
        self.client = client

    def _run(self, work: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def __enter__(self) -> BlockingDevice:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def region(self) -> str | None:
        """The region of the live session (None between sessions)."""
        return self.client.status.region

    def start(self, timeout: float | None = None) -> str | None:
        """Start connecting; with ``timeout``, wait until connected and return the region."""
        self._run(self.client.start(), 5.0)
        return self._run(self.client.wait_connected(timeout), timeout + 1) if timeout else None

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self._run(self.client.publish(topic, payload, qos), 10.0)

    def flush(self, timeout: float) -> None:
        self._run(self.client.flush(timeout), timeout + 1)

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        self._run(self.client.subscribe(topic_filter, handler), 10.0)

    def shadow(self, name: str = "", on_delta: Callable[[Json], None] | None = None) -> BlockingShadow:
        """The device's shadow (``name`` for a named one), its deltas handed to ``on_delta``."""
        shadow = DeviceShadow(self.client, name, on_delta=on_delta)
        self._run(shadow.start(), 10.0)
        return BlockingShadow(self, shadow)

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.client.stop(), 10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._loop.close()


class BlockingShadow:
    """``DeviceShadow``, blocking (made by ``BlockingDevice.shadow``)."""

    def __init__(self, device: BlockingDevice, shadow: DeviceShadow) -> None:
        self._device = device
        self._shadow = shadow

    def get(self, timeout: float = 15.0) -> Json:
        return self._device._run(self._shadow.get(), timeout)

    def update(self, reported: Json | None = None, desired: Json | None = None, timeout: float = 15.0) -> Json:
        return self._device._run(self._shadow.update(reported, desired), timeout)
