"""One region pulling another's change log: resumable, idempotent, with jittered backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from geofleet.replication.apply import Applier
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

    @property
    def backlog(self) -> int:
        return max(0, self.peer_head - self.cursor)

    def to_json(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "peerHead": self.peer_head, "backlog": self.backlog, "lagMs": self.lag_ms,
                "lastContactMs": self.last_contact_ms, "lastError": self.last_error, "applied": self.applied,
                "paused": self.paused, "digestsAgree": self.digests_agree, "lastSyncMs": self.last_sync_ms}


class Link:
    def __init__(self, region: str, peer: str, url: str, stream: str, http: httpx.AsyncClient, store: Store,
                 applier: Applier, status: LinkStatus, resume: asyncio.Event) -> None:
        self.region, self.peer, self.url, self.stream = region, peer, url, stream
        self._http, self._store, self._applier, self._status = http, store, applier, status
        self._resume = resume

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
                self._status.last_error = message
                caught_up = False
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _pull_once(self, wait: float) -> bool:
        """Pull and apply one batch; True when this region has caught up with the peer."""
        cursor = self._store.cursor(self.peer, self.stream)
        response = await self._http.get(f"{self.url}/v1/changes", params={
            "peer": self.region, "after": cursor, "stream": self.stream, "wait": wait}, timeout=wait + 10.0)
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
            if batch.changes:
                self._store.set_cursor(self.peer, self.stream, batch.changes[-1].seq)
        now_ms = time.time() * 1000
        self._status.last_contact_ms, self._status.last_error = int(now_ms), None  # either stream proves the peer up
        if self.stream == "all":
            self._note(batch.head, batch.changes[-1].seq if batch.changes else cursor, now_ms, batch)
        for publish in publishes:
            await publish()
        return not batch.changes or batch.changes[-1].seq >= batch.head

    def _note(self, head: int, cursor: int, now_ms: float, batch: Any) -> None:
        status = self._status
        status.peer_head, status.cursor = head, cursor
        status.applied += len(batch.changes)
        for change in batch.changes:
            lag = max(0.0, now_ms - change.hlc.wall_ms)
            status.lag_ms = lag
            status.recent_lags_ms.append(lag)
        del status.recent_lags_ms[:-1000]
