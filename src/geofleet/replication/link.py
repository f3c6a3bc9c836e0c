"""One region pulling another's change log: resumable, idempotent, with jittered backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from geofleet.replication.apply import Applier
from geofleet.replication.peer_identity import check_served_by
from geofleet.replication.wire import BatchError, parse_batch
from geofleet.store.base import Store

log = logging.getLogger(__name__)

LONG_POLL_S = 10.0
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0


@dataclass
class LinkStatus:
    """What an operator needs to know about one peer's stream into this region."""

    cursor: int = 0
    peer_head: int = 0
    lag_ms: float | None = None
    """Write in the peer to apply here, for the last change applied."""
    last_contact_ms: int | None = None
    last_error: str | None = None
    applied: int = 0
    paused: bool = False
    digests_agree: bool | None = None
    last_sync_ms: int | None = None
    recent_lags_ms: list[float] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    """Per stream, its failure since its last successful pull: one stream's success (the priority
    stream answers every long poll) must not hide that the other keeps failing."""
    resyncs: int = 0
    """Times the peer's log had been truncated past our cursor and anti-entropy caught us up."""

    @property
    def backlog(self) -> int:
        return max(0, self.peer_head - self.cursor)

    @property
    def peer_fault(self) -> str | None:
        """The error of a stream that the peer answers but cannot serve (not merely unreachable)."""
        return next((f.message for f in self.failures.values() if f.peer_answered), None)

    def failed(self, stream: str, message: str, peer_answered: bool) -> None:
        since = self.failures[stream].since_ms if stream in self.failures else int(time.time() * 1000)
        self.failures[stream] = Failure(message, peer_answered, since)
        self.last_error = message

    def succeeded(self, stream: str) -> None:
        self.failures.pop(stream, None)
        self.last_error = next((f.message for f in self.failures.values()), None)

    def to_json(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "peerHead": self.peer_head, "backlog": self.backlog, "lagMs": self.lag_ms,
                "lastContactMs": self.last_contact_ms, "lastError": self.last_error, "applied": self.applied,
                "paused": self.paused, "digestsAgree": self.digests_agree, "lastSyncMs": self.last_sync_ms,
                "failingSinceMs": min((f.since_ms for f in self.failures.values()), default=None),
                "resyncs": self.resyncs}


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    peer_answered: bool
    """The peer answered (an HTTP error or a bad batch), as opposed to being unreachable."""
    since_ms: int


Resync = Callable[[], Awaitable[object]]


class Link:
    def __init__(self, region: str, peer: str, url: str, stream: str, http: httpx.AsyncClient, store: Store,
                 applier: Applier, status: LinkStatus, resume: asyncio.Event, resync: Resync) -> None:
        """``resync`` runs anti-entropy with the peer: how a cursor the peer's log no longer
        reaches is caught up."""
        self.region, self.peer, self.url, self.stream = region, peer, url, stream
        self._http, self._store, self._applier, self._status = http, store, applier, status
        self._resume = resume
        self._resync = resync

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        caught_up = False
        while True:
            await self._resume.wait()
            try:
                caught_up = await self._pull_once(wait=LONG_POLL_S if caught_up else 0.0)
                backoff = BACKOFF_START_S
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a link must never die: report, back off, try again
                message = f"{type(error).__name__}: {error}"
                if message != self._status.last_error:
                    expected = isinstance(error, httpx.HTTPError | BatchError | ValueError)
                    log.log(logging.WARNING if expected else logging.ERROR, "replication %s -> %s (%s): %s",
                            self.peer, self.region, self.stream, message, exc_info=not expected)
                answered = not isinstance(error, httpx.TransportError)
                if answered and self.stream == "all":
                    await self._refresh_head()  # first, so that the error and the backlog show together
                self._status.failed(self.stream, message, answered)
                caught_up = False
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _pull_once(self, wait: float) -> bool:
        """Pull and apply one batch; True when this region has caught up with the peer."""
        cursor = self._store.cursor(self.peer, self.stream)
        response = await self._http.get(f"{self.url}/v1/changes", params={
            "peer": self.region, "after": cursor, "stream": self.stream, "wait": wait}, timeout=wait + 10.0)
        check_served_by(response, self.peer)
        if response.status_code == 410 and self.stream == "all":
            await self._catch_up(cursor, response)
            return False
        if response.status_code != 200:
            raise BatchError(f"peer answered HTTP {response.status_code}: {response.text[:200]}")
        batch = parse_batch(response.json(), self.peer, cursor)
        if not self._resume.is_set():
            return False  # paused while the request was in flight: apply nothing
        publishes = []
        with self._store.atomic():
            for change in batch.changes:
                publish = self._applier.change(change)
                if publish is not None:
                    publishes.append(publish)
            if batch.through > cursor:
                self._store.set_cursor(self.peer, self.stream, batch.through)
        now_ms = time.time() * 1000
        self._status.last_contact_ms = int(now_ms)
        self._status.succeeded(self.stream)
        if self.stream == "all":
            self._note(batch.head, max(cursor, batch.through), now_ms, batch)
        for publish in publishes:
            await publish()
        return batch.through >= batch.head

    async def _catch_up(self, cursor: int, response: httpx.Response) -> None:
        """The peer truncated its log past our cursor (we were away longer than its retention):
        anti-entropy brings every record and shadow, tombstones included, to at least the state
        of the ``head`` it answered with, and the cursor moves there."""
        data = response.json()
        head = data.get("head") if isinstance(data, dict) and data.get("region") == self.peer else None
        if not isinstance(head, int):
            raise BatchError(f"peer answered HTTP 410 without its head: {response.text[:200]}")
        log.warning("replication %s -> %s: cursor %d is before the start of %s's change log (%s); "
                    "catching up by anti-entropy", self.peer, self.region, cursor, self.peer, data.get("logStart"))
        await self._resync()
        if not self._resume.is_set():
            return  # paused meanwhile: leave the cursor, and catch up again after resuming
        self._store.set_cursor(self.peer, self.stream, head)
        self._status.resyncs += 1
        self._status.cursor = max(self._status.cursor, head)
        self._status.peer_head = max(self._status.peer_head, head)

    async def _refresh_head(self) -> None:
        """After a pull the peer answered but could not serve, learn the peer's head anyway, so the
        backlog shows what this region is missing while the link is stuck (an unreachable peer is
        not asked: its head is unknown, and a black-holed one would hold the retry up)."""
        data = None
        for _ in range(2):  # a peer that failed a request closes its connection: the first try may find it stale
            try:
                response = await self._http.get(f"{self.url}/v1/head", params={"peer": self.region}, timeout=5.0)
                check_served_by(response, self.peer)
                data = response.json() if response.status_code == 200 else None
                break
            except httpx.RemoteProtocolError:
                continue
            except (httpx.HTTPError, BatchError, ValueError):
                return
        if isinstance(data, dict) and data.get("region") == self.peer and isinstance(data.get("head"), int):
            self._status.peer_head = max(self._status.peer_head, data["head"])
            self._status.cursor = self._store.cursor(self.peer, self.stream)

    def _note(self, head: int, cursor: int, now_ms: float, batch: Any) -> None:
        status = self._status
        status.peer_head, status.cursor = head, cursor
        status.applied += len(batch.changes)
        for change in batch.changes:
            lag = max(0.0, now_ms - change.hlc.wall_ms)
            status.lag_ms = lag
            status.recent_lags_ms.append(lag)
        del status.recent_lags_ms[:-1000]
