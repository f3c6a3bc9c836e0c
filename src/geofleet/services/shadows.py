"""The device shadow service: the shadow topics over MQTT and the same operations over HTTP.

The read-modify-write of one request runs without an ``await`` between reading the stored
shadow and writing the new one, so requests on one region are serialized by the event loop and
the version check is exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from geofleet.domain import shadow as doc
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.hlc import HLC, Clock
from geofleet.domain.horizon import TombstoneHorizon
from geofleet.domain.json_types import Json
from geofleet.domain.leaves import Leaves
from geofleet.domain.names import ShadowName, ShadowOp, ShadowRequest, ThingName, check_shadow_name, check_thing_name
from geofleet.domain.residency import Scope, WrongRegion
from geofleet.store.base import Store

Publish = Callable[[str, bytes], Awaitable[None]]

def _encode(body: Json) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class ShadowService:
    def __init__(self, store: Store, clock: Clock, region: str, publish: Publish,
                 horizon: TombstoneHorizon) -> None:
        """``horizon`` says how old a tombstone (or a write shadowed by a later one) must be
        before no region can still send a write it hides: shadows collect behind it, and a
        write older than the collected point is refused (``leaves.merge``)."""
        self._store = store
        self._clock = clock
        self._region = region
        self._publish = publish
        self._horizon = horizon

    async def handle(self, request: ShadowRequest, payload: bytes) -> None:
        """Serve one MQTT request: answer on ``/accepted`` or ``/rejected``, never raise."""
        now = int(time.time())
        try:
            thing, name = _checked_names(request)
            if request.op is ShadowOp.UPDATE:
                await self.update(thing, name, payload)
                return  # update() publishes accepted, documents and delta itself
            if request.op is ShadowOp.GET:
                answer = self.get(thing, name, payload)
            else:
                answer = await self.delete(thing, name, payload)
        except doc.ShadowError as error:
            await self._publish(request.topic("rejected"), _encode(error.payload(now)))
            return
        except WrongRegion as error:  # AWS has no such code: 403, as for a request not allowed here
            await self._publish(request.topic("rejected"), _encode(doc.ShadowError(403, error.message).payload(now)))
            return
        await self._publish(request.topic("accepted"), _encode(answer))

    def get(self, thing: ThingName, name: ShadowName, payload: bytes = b"") -> Json:
        self._check_here(thing)
        _, token = doc.parse_json(payload)
        return doc.get_response(self._current(thing, name), name or thing, token, int(time.time()))

    async def update(self, thing: ThingName, name: ShadowName, payload: bytes) -> Json:
        """Apply an update, publish ``/accepted``, ``/documents`` and ``/delta``; return the
        accepted document. A rejection raises ShadowError: over MQTT ``handle`` publishes it on
        ``/rejected``, over HTTP it becomes the status code (and, as in AWS, no MQTT message)."""
        self._check_here(thing)
        now, hlc = int(time.time()), self._clock.now()
        result = doc.apply_update(self._current(thing, name), doc.parse_update(payload), now,
                                  hlc=hlc, region=self._region, horizon=self._horizon.current())
        self._store.put_shadow(thing, name, result.shadow, hlc, self._region, ops=result.ops)
        request = ShadowRequest(thing, name, ShadowOp.UPDATE)
        await self._publish(request.topic("accepted"), _encode(result.accepted))
        await self._publish_changes(request, result.documents, result.delta)
        return result.accepted

    def merge_remote(self, key: str, ops: Leaves, hlc: HLC, origin: str) -> Callable[[], Awaitable[None]]:
        """Fold another region's writes into this region's copy (inside the caller's
        transaction); returns what to publish once that transaction has committed."""
        thing, _, name = key.partition("|")
        self._clock.observe(hlc)
        result = doc.merge_remote(self._current(thing, name), ops, int(time.time()))
        self._store.put_shadow(thing, name, result.shadow, hlc, origin)

        async def publish() -> None:
            if result.changed and result.documents is not None:
                await self._publish_changes(ShadowRequest(thing, name, ShadowOp.UPDATE), result.documents,
                                            result.delta)

        return publish

    async def _publish_changes(self, request: ShadowRequest, documents: Json, delta: Json | None) -> None:
        await self._publish(request.topic("documents"), _encode(documents))
        if delta is not None:
            await self._publish(request.topic("delta"), _encode(delta))

    async def delete(self, thing: ThingName, name: ShadowName, payload: bytes = b"") -> Json:
        self._check_here(thing)
        _, token = doc.parse_json(payload)
        hlc = self._clock.now()
        deleted, answer, ops = doc.delete(self._current(thing, name), name or thing, token, int(time.time()),
                                          hlc=hlc, region=self._region, horizon=self._horizon.current())
        self._store.put_shadow(thing, name, deleted, hlc, self._region, ops=ops)
        return answer

    def names(self, thing: ThingName) -> list[str]:
        self._check_here(thing)
        return self._store.shadow_names(thing)

    def names_after(self, thing: ThingName, after: str, limit: int) -> list[str]:
        """A page of ``names`` (keys after ``after``, at most ``limit``) for the paged listing."""
        self._check_here(thing)
        return self._store.shadow_names_after(thing, after, limit)

    def _check_here(self, thing: str) -> None:
        """A device's shadows are read and written only in its residency scope (WrongRegion, 421,
        names where to ask): elsewhere they do not exist, and a write would put them there."""
        Scope.decode(self._store.scope_of(thing)).require(thing, self._region)

    def _current(self, thing: str, name: str) -> doc.Shadow:
        return self._store.get_shadow(thing, name) or doc.Shadow()


def _checked_names(request: ShadowRequest) -> tuple[ThingName, ShadowName]:
    """The names of an MQTT request, checked where they enter (the topic). AWS answers a request
    for an invalid thing or shadow name with a 400 on the request's own ``/rejected`` topic; a
    ShadowError is what ``handle`` publishes there."""
    try:
        return check_thing_name(request.thing), check_shadow_name(request.shadow)
    except InvalidRequest as error:
        raise doc.ShadowError(400, error.message) from None

