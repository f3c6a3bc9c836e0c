"""The device's shadow helper: get, update, and a delta callback that never misses a change.

Shadow requests are MQTT request/response over AWS's reserved topics, matched by
``clientToken``. A delta published while the device was away (or failing over) is not lost:
after every new session the helper gets the shadow again and, when it has a ``delta``, calls
the callback with it, as if the delta had just arrived.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable

from geofleet.device.connection import DeviceClient
from geofleet.domain.errors import GeofleetError
from geofleet.domain.json_types import Json
from geofleet.domain.names import shadow_prefix

DeltaCallback = Callable[[Json], Awaitable[None] | None]


class ShadowRejected(GeofleetError):
    """The shadow service answered on ``/rejected``: ``status`` and message are AWS's.

    Example::

        try:
            await shadow.get()
        except ShadowRejected as exc:
            if exc.status != 404: raise
    """

    code = "ShadowRejected"

    def __init__(self, answer: Json) -> None:
        super().__init__(f"shadow request rejected ({answer.get('code')}): {answer.get('message')}")
        self.status = int(answer.get("code") or 400)
        self.answer = answer


class DeviceShadow:
    """A device's own shadow (classic, or named with ``name``), kept in step across failovers.

    Example::

        async with DeviceShadow(device, on_delta=apply_settings) as shadow:
            await shadow.update(reported={"firmware": "1.2.0"})
            document = await shadow.get()
    """

    def __init__(self, device: DeviceClient, name: str = "", timeout: float = 10.0, *,
                 on_delta: DeltaCallback | None = None) -> None:
        self._device = device
        self._prefix = shadow_prefix(device.device_id, name)
        self._timeout = timeout
        self._waiting: dict[str, asyncio.Future[tuple[bool, Json]]] = {}
        self._on_delta: list[DeltaCallback] = [on_delta] if on_delta is not None else []
        self._delta_version = -1
        """The shadow version of the last delta handed to the callbacks (from a delta or a resync)."""

    async def __aenter__(self) -> DeviceShadow:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe to the shadow's topics (kept across sessions) and resync after each
        (``async with`` does it)."""
        for topic, handler in self._topics().items():
            await self._device.subscribe(topic, handler)
        self._device.on_session(self._resync)
        if self._device.status.connected:  # this session began before the hook existed
            await self._resync()

    async def stop(self) -> None:
        """Unsubscribe and stop resyncing (``async with`` does it)."""
        self._device.remove_on_session(self._resync)
        for topic in self._topics():
            await self._device.unsubscribe(topic)

    def _topics(self) -> dict[str, Callable[[str, bytes], Awaitable[None] | None]]:
        topics: dict[str, Callable[[str, bytes], Awaitable[None] | None]] = {
            f"{self._prefix}/{operation}/{outcome}": self._answer
            for operation in ("get", "update") for outcome in ("accepted", "rejected")}
        topics[f"{self._prefix}/update/delta"] = self._delta
        return topics

    def on_delta(self, callback: DeltaCallback) -> None:
        """Call ``callback(delta_state)`` for every change of ``desired`` the device has not
        reported, including those made while it was away (caught up after each new session)."""
        self._on_delta.append(callback)

    async def get(self) -> Json:
        """The shadow document; ``ShadowRejected`` (status 404) when there is none yet."""
        return await self._request("get", {})

    async def update(self, reported: Json | None = None, desired: Json | None = None) -> Json:
        """Merge ``reported``/``desired`` into the shadow; the accepted answer (with its version)."""
        state: Json = {}
        if reported is not None:
            state["reported"] = reported
        if desired is not None:
            state["desired"] = desired
        return await self._request("update", {"state": state})

    async def _request(self, operation: str, body: Json) -> Json:
        token = secrets.token_hex(8)
        future: asyncio.Future[tuple[bool, Json]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            payload = json.dumps({**body, "clientToken": token}).encode()
            await self._device.send_now(f"{self._prefix}/{operation}", payload, self._timeout)
            accepted, answer = await asyncio.wait_for(future, self._timeout)
        finally:
            self._waiting.pop(token, None)
        if not accepted:
            raise ShadowRejected(answer)
        return answer

    def _answer(self, topic: str, payload: bytes) -> None:
        answer = _json(payload)
        future = self._waiting.get(str(answer.get("clientToken", "")))
        if future is not None and not future.done():
            future.set_result((topic.endswith("/accepted"), answer))

    async def _delta(self, _topic: str, payload: bytes) -> None:
        delta = _json(payload)
        version = delta.get("version")
        if isinstance(version, int):
            if version <= self._delta_version:
                return  # already handed over (a resync got it first)
            self._delta_version = version
        await self._call(delta.get("state") or {})

    async def _resync(self) -> None:
        try:
            document = await self.get()
        except ShadowRejected as exc:
            if exc.status == 404:
                return  # no shadow yet: nothing to catch up on
            raise
        delta = (document.get("state") or {}).get("delta")
        version = document.get("version")
        if delta and not (isinstance(version, int) and version <= self._delta_version):
            self._delta_version = version if isinstance(version, int) else self._delta_version
            await self._call(delta)

    async def _call(self, delta: Json) -> None:
        for callback in self._on_delta:
            result = callback(delta)
            if result is not None:
                await result


def _json(payload: bytes) -> Json:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
