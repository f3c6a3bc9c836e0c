"""What a region serves to its peers on the peer port (HTTPS, peer certificates required):
its change log (long-polled), its digests and the contents of a digest bucket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from geofleet.body_limit import BodyLimit
from geofleet.domain.digest import BUCKETS
from geofleet.domain.errors import GeofleetError
from geofleet.domain.residency import EVERYWHERE, Scope
from geofleet.http_errors import install_error_shape
from geofleet.replication.antientropy import bucket_contents
from geofleet.replication.peer_identity import PEER_COMMON_NAME
from geofleet.replication.scoping import PeerView
from geofleet.replication.wire import change_to_json
from geofleet.services.guard import guard_action
from geofleet.store.base import Change, Store

MAX_BATCH = 1000
MAX_WAIT_S = 30.0
MAX_PEER_BODY_BYTES = 1024 * 1024
"""Peer requests carry guard actions (a provisioning answer: a few KB); anything far larger is refused while read."""
PRIORITY_KINDS = ("certificate", "ca-certificate")
"""Certificate and customer CA status changes (revocations) travel on a stream of their own."""


class ChangeFeed:
    """Wakes long-polling peers when this region's change log grows."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def close(self) -> None:
        """Shutting down: answer every long poll now."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class ForwardReceiver(Protocol):
    """Takes the messages another region's rules forward here (``services.rules.inbox``)."""

    async def receive(self, origin: str, body: dict[str, Any]) -> dict[str, Any]: ...


class UnknownPeer(GeofleetError):
    status = 403
    code = "UnknownPeer"


class OutOfScope(GeofleetError):
    """A peer asked for the items of a residency scope it is not in."""

    status = 403
    code = "OutOfScope"


class PeerIdentityMismatch(GeofleetError):
    """The region a request names is not the one its TLS certificate belongs to."""

    status = 403
    code = "PeerIdentityMismatch"


def served_through(found: list[Change], after: int, limit: int, head: int) -> int:
    """How far a ``/v1/changes`` answer read the log: to ``head`` when it read fewer entries
    than ``limit`` (nothing else is there: entries may be missing below the head, deleted
    by a residency purge, or of the other stream), else to its last entry. Without the
    head, a peer whose cursor sits below a deleted last entry would never catch up."""
    return head if len(found) < limit else found[-1].seq


def create_peer_app(region: str, peers: set[str], store: Store, view: PeerView, feed: ChangeFeed,
                    acknowledged: dict[str, int], health: Callable[[], Awaitable[dict[str, Any]]],
                    on_acknowledged: Callable[[], object] = lambda: None,
                    forwards: ForwardReceiver | None = None) -> FastAPI:
    """``view`` filters every answer by residency scope (``scoping.py``); ``acknowledged``
    (peer -> how far it has pulled) is kept current here; ``on_acknowledged`` runs when a peer's
    position moves (the log may be truncated then); ``forwards`` takes what peers' rules forward
    here."""
    app = FastAPI(title=f"geofleet replication {region}", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_shape(app)
    app.add_middleware(BodyLimit, limit=MAX_PEER_BODY_BYTES)

    def check(peer: str, request: Request) -> None:
        """The named peer must be a region of the fleet *and* the holder of this connection's certificate."""
        if peer not in peers:
            raise UnknownPeer(f"{peer!r} is not a peer region of {region}")
        certified = getattr(request.state, PEER_COMMON_NAME, None)
        if certified != peer:
            raise PeerIdentityMismatch(f"this connection's peer certificate is {certified!r}'s; it may not act "
                                       f"as {peer!r}")

    @app.get("/v1/changes")
    async def changes(request: Request, peer: str, after: int = Query(0, ge=0),
                      limit: int = Query(MAX_BATCH, ge=1, le=MAX_BATCH),
                      stream: str = Query("all", pattern="^(all|priority)$"),
                      wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S)) -> Any:
        check(peer, request)
        kinds = PRIORITY_KINDS if stream == "priority" else None
        if stream == "all" and after > acknowledged.get(peer, 0):
            acknowledged[peer] = after
            on_acknowledged()
        found = store.changes(after, limit, kinds)
        deadline = time.monotonic() + wait
        while not found and not feed.closed and (remaining := deadline - time.monotonic()) > 0:
            await feed.wait(remaining)  # any write wakes us; the priority stream waits on for its kind
            found = store.changes(after, limit, kinds)
        # Checked after reading, with no await between: a truncation during the wait cannot slip by.
        start = store.log_start()
        if stream == "all" and after < start:  # the priority stream is a fast path: it resumes at the start
            return JSONResponse({"code": "ChangeLogTruncated", "region": region, "head": store.head(),
                                 "logStart": start,
                                 "message": f"changes {after + 1}-{start} of {region} are no longer in its log; "
                                            "catch up by anti-entropy, then pull after 'head'"}, status_code=410)
        shown = [change_to_json(seen) for change in found if (seen := view.change(change, peer)) is not None]
        # ``through``: how far the log was read for this answer, so that the peer's cursor passes
        # changes it may not see (it learns a position, never what was there).
        head = store.head()
        return {"region": region, "head": head, "through": served_through(found, after, limit, head),
                "changes": shown}

    @app.get("/v1/head")
    async def log_head(request: Request, peer: str) -> dict[str, Any]:
        """How far this region's log goes: cheap, and answers even when a change cannot be served."""
        check(peer, request)
        return {"region": region, "head": store.head(), "logStart": store.log_start()}

    @app.post("/v1/guard/{action}")
    async def guard(request: Request, peer: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """The provision-once guard of device ids this region owns (see provisioning)."""
        check(peer, request)
        return {"region": region, **guard_action(store, action, body)}

    @app.post("/v1/forward")
    async def forward(request: Request, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        """Messages the peer's rules forward to this region (see ``services.rules.inbox``)."""
        check(peer, request)
        if forwards is None:
            raise GeofleetError(f"region {region} takes no forwarded messages")
        return {"region": region, **await forwards.receive(peer, body)}

    @app.get("/v1/health")
    async def peer_health(request: Request, peer: str) -> dict[str, Any]:
        """This region's own deep health, for its peers' view of the fleet."""
        check(peer, request)
        return await health()

    @app.get("/v1/digest")
    async def digest(request: Request, peer: str) -> dict[str, Any]:
        """Digests per residency scope, of the scopes the peer is in only."""
        check(peer, request)
        return {"region": region, "scopes": {scope: {str(b): d for b, d in buckets.items()}
                                             for scope, buckets in view.digests(peer).items()}}

    @app.get("/v1/bucket/{bucket}")
    async def bucket(request: Request, peer: str, bucket: int, scope: str = Query(EVERYWHERE, max_length=4096)
                     ) -> dict[str, Any]:
        check(peer, request)
        if not 0 <= bucket < BUCKETS:
            raise GeofleetError(f"bucket must be 0-{BUCKETS - 1}")
        if not Scope.decode(scope).includes(peer):
            raise OutOfScope(f"scope {scope!r} does not include {peer}")
        return {"region": region, **bucket_contents(store, view, peer, bucket, scope)}

    return app
