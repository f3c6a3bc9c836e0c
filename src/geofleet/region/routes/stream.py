"""``GET /v1/stream``: newline-delimited JSON of every message routed here that matches a filter
(telemetry and lifecycle events), for the application SDK's merged event stream.

A line is written out before the publishing device gets its PUBACK (the broker waits on the
future ``_Tap.offer`` returns), so a QoS 1 message reaches the application or is resent. A
reader that falls ``STREAM_QUEUE`` messages behind is cut off (an ``overflow`` line) rather than
holding the broker back; it reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from geofleet.broker.base import Broker
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.json_types import Json
from geofleet.domain.topics import TopicFilterIndex
from geofleet.region.routes.access import AdminAccess
from geofleet.region.routes.delivery import MAX_TOPIC_LENGTH

STREAM_QUEUE = 10_000
"""Messages a slow stream reader may fall behind by before it is cut off (and reconnects)."""
KEEPALIVE_S = 5.0
"""An empty line this often lets both ends notice a dead peer."""
DEFAULT_FILTERS = ("#", "$aws/events/#")

Line = tuple[bytes, asyncio.Future[None] | None]


class _Tap:
    """One reader's queue of lines, fed by the broker's tap and drained by the response."""

    def __init__(self, region: str, index: TopicFilterIndex) -> None:
        self._region = region
        self._index = index
        self._queue: asyncio.Queue[Line | None] = asyncio.Queue(STREAM_QUEUE)
        self._loop = asyncio.get_running_loop()
        self.untap: Callable[[], None] = lambda: None

    def offer(self, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        """The broker's listener: queue a matching message; the future resolves once written."""
        if not self._index.match(topic):
            return None
        line = {"region": self._region, "topic": topic, "receivedMs": time.time_ns() // 1_000_000,
                **_encode(payload)}
        written = self._loop.create_future()
        try:
            self._queue.put_nowait((json.dumps(line, separators=(",", ":")).encode() + b"\n", written))
        except asyncio.QueueFull:
            self.untap()
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            return None
        return written

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            yield json.dumps({"region": self._region, "stream": "open"}).encode() + b"\n"
            while True:
                try:
                    item = await asyncio.wait_for(self._queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b"\n"  # keep-alive: lets both ends notice a dead peer
                    continue
                if item is None:
                    yield json.dumps({"region": self._region, "stream": "overflow"}).encode() + b"\n"
                    return
                yield item[0]
                if item[1] is not None and not item[1].done():
                    item[1].set_result(None)  # the line is written out: the device may have its PUBACK
        finally:
            with contextlib.suppress(ValueError):
                self.untap()
            self._release()

    def _release(self) -> None:
        """Nobody will write what is left: release its publishers."""
        while not self._queue.empty():
            left = self._queue.get_nowait()
            if left is not None and left[1] is not None and not left[1].done():
                left[1].set_result(None)


def router(region: str, broker: Broker, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["presence"], dependencies=access.guard)

    @routes.get("/v1/stream")
    async def stream(topic_filter: Annotated[list[str] | None, Query(alias="filter")] = None) -> Response:
        """Newline-delimited JSON of every message routed here that matches a filter (default:
        ``#`` and ``$aws/events/#``), until the client goes away."""
        index = TopicFilterIndex()
        for item in topic_filter or DEFAULT_FILTERS:
            if not item or len(item) > MAX_TOPIC_LENGTH:
                raise InvalidRequest(f"filter must be 1-{MAX_TOPIC_LENGTH} characters")
            index.add(item)
        tap = _Tap(region, index)
        tap.untap = broker.tap(tap.offer)
        return StreamingResponse(tap.lines(), media_type="application/x-ndjson")

    return routes


def _encode(payload: bytes) -> Json:
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payloadBase64": base64.b64encode(payload).decode()}
