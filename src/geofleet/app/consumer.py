"""A durable consumer: every matching message from every region, at least once, from where the
application left off.

Each region journals the device publishes it acknowledged that match some consumer's filters,
numbered by its own sequence (``domain/consumers.py``), and keeps each consumer's offset in it.
``Consumer`` reads every region in parallel, each from that region's committed offset, with long
polls (no busy polling); a region that does not answer is retried with backoff (jittered, at
most ``RETRY_MAX_S``) and read on from where this consumer was when it answers again.

Commits (the choice, and why): a message counts as processed when the loop asks for the next
one (the ``async for`` body finished with it), when the application calls ``commit()`` during
its body, or when the ``async with`` block ends without an exception (a ``break`` once the work
is done). Processed positions are committed to each region every ``commit_interval`` seconds,
by ``commit()``, and when the block is left. So a crash or an exception in the body never
commits the message being processed: it comes again after the restart (at-least-once), and the
only duplicates are messages processed after the last commit. A region's messages come in that
region's order; regions interleave.
Messages carry ``id`` (``<region>:<seq>``) for an application that wants to drop duplicates
(a device's QoS 1 resend that reached two regions is two journal entries, one per region).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from geofleet.app.stream import Region
from geofleet.domain.consumers import READ_LIMIT_DEFAULT, WAIT_DEFAULT_S, JournalEntry, check_consumer_name
from geofleet.domain.errors import GeofleetError, InvalidRequest, NotFound, RegionUnreachable, answer

Message = JournalEntry
"""One journaled device publish: ``id``, ``region``, ``seq``, ``topic``, ``client_id``,
``timestamp_ms``, ``payload`` (bytes) and ``json()``."""

RETRY_MAX_S = 5.0
"""The longest wait between two attempts to read a region that did not answer."""
QUEUE_ENTRIES = 1000
"""Messages read ahead of the application; a slow application slows the reads, not memory."""

Nearest = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Read:
    """Every message of ``region`` up to ``seq`` has been queued (a page's end, matching or not)."""

    region: str
    seq: int


@dataclass(frozen=True, slots=True)
class _Gone:
    """A region that knew the consumer says it does not exist any more: it was deleted."""

    error: NotFound


class Consumer:
    """Made by ``FleetApp.consumer``: ``async with`` (creates or updates the consumer when
    filters are given) waits until every healthy region knows it and answered its offset,
    ``async for`` yields messages, leaving the block commits what was processed.

    Example::

        async with app.consumer("billing", filters=["dt/+/usage"]) as consumer:
            async for message in consumer:
                bill(message.client_id, message.json())
    """

    def __init__(self, http: httpx.AsyncClient, regions: Sequence[Region], nearest: Nearest,
                 healthy: Callable[[], Awaitable[list[Region]]], name: str, filters: Sequence[str] | None,
                 ready_timeout: float, commit_interval: float = 1.0, batch: int = READ_LIMIT_DEFAULT,
                 wait: float = WAIT_DEFAULT_S) -> None:
        self.name = check_consumer_name(name)
        self._http = http
        self._regions = list(regions)
        self._nearest = nearest
        self._healthy = healthy
        self._filters = None if filters is None else list(filters)
        self._ready_timeout = ready_timeout
        self._commit_interval = commit_interval
        self._batch = batch
        self._wait = wait
        self._queue: asyncio.Queue[JournalEntry | _Read | _Gone] = asyncio.Queue(QUEUE_ENTRIES)
        self._tasks: list[asyncio.Task[None]] = []
        self._current: JournalEntry | None = None
        self._processed: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._commit_lock = asyncio.Lock()
        self.lost = 0
        """Entries regions' retention dropped before this consumer read them (0 unless it was
        away longer than the retention; see ``domain.consumers.RETENTION_S``)."""

    @property
    def committed(self) -> dict[str, int]:
        """The offset committed in each region (that this consumer knows of)."""
        return dict(self._committed)

    @property
    def processed(self) -> dict[str, int]:
        """How far this consumer has processed each region (committed at the next commit)."""
        return dict(self._processed)

    async def __aenter__(self) -> Consumer:
        """Create the consumer (with filters) or check it exists (NotFound), then wait until every
        healthy region answered its offset. Reading raises NotFound if it is deleted meanwhile."""
        if self._filters is not None:
            await self._nearest("PUT", f"/v1/consumers/{self.name}", json={"filters": self._filters})
        else:
            await self._nearest("GET", f"/v1/consumers/{self.name}")  # NotFound for an unknown consumer
        ready = {r.name: asyncio.Event() for r in self._regions}
        healthy = {r.name for r in await self._healthy()}
        self._tasks = [asyncio.create_task(self._follow(r, ready[r.name])) for r in self._regions]
        self._tasks.append(asyncio.create_task(self._commit_loop()))
        try:
            await asyncio.wait_for(asyncio.gather(*(ready[n].wait() for n in healthy)), self._ready_timeout)
        except TimeoutError:
            await self._stop()
            late = sorted(n for n in healthy if not ready[n].is_set())
            raise RegionUnreachable(f"consumer {self.name}: {', '.join(late)} did not answer its offset within "
                                    f"{self._ready_timeout:g} s (down, or the consumer not replicated there yet)"
                                    ) from None
        return self

    async def __aexit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        if error_type is None:  # the block ended normally (a break after the work): the current one is done
            self._finish_current()
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading and commit what was processed (``async with`` does it)."""
        await self._stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._commit_processed(), 5.0)

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[JournalEntry]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[JournalEntry]:
        while True:
            self._finish_current()  # the loop asked for the next one: the last is processed
            item = await self._queue.get()
            if isinstance(item, _Gone):
                raise item.error
            if isinstance(item, _Read):
                self._processed[item.region] = max(self._processed.get(item.region, 0), item.seq)
                continue
            self._current = item
            yield item

    def _finish_current(self) -> None:
        if self._current is not None:
            done = self._current
            self._processed[done.region] = max(self._processed.get(done.region, 0), done.seq)
            self._current = None

    async def commit(self) -> dict[str, int]:
        """Count the message being processed (if any) as processed, and commit every region's
        processed position now; returns the offsets committed. A region that does not answer
        keeps its position for the next commit."""
        self._finish_current()
        await self._commit_processed()
        return self.committed

    async def _commit_processed(self) -> None:
        async with self._commit_lock:
            due = {r: s for r, s in self._processed.items() if s > self._committed.get(r, 0)}
            urls = {r.name: r.url for r in self._regions}

            async def one(region: str, seq: int) -> None:
                try:
                    answer(await self._http.put(f"{urls[region]}/v1/consumers/{self.name}/offsets/{region}",
                                                json={"seq": seq}))
                except (httpx.HTTPError, GeofleetError):
                    return  # committed at the next round; until then a restart repeats a few
                self._committed[region] = max(self._committed.get(region, 0), seq)

            await asyncio.gather(*(one(r, s) for r, s in due.items()))

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            await self._commit_processed()

    async def _follow(self, region: Region, ready: asyncio.Event) -> None:
        """Read one region's journal for this consumer, forever, from its committed offset."""
        base = f"{region.url}/v1/consumers/{self.name}"
        position: int | None = None
        delay = 0.2
        while True:
            try:
                if position is None:
                    offset = answer(await self._http.get(f"{base}/offsets/{region.name}"))
                    position = int(offset["seq"])
                    self._committed[region.name] = position
                    self._processed.setdefault(region.name, position)
                    ready.set()
                page = answer(await self._http.get(
                    f"{base}/messages", params={"after": position, "limit": self._batch, "wait": self._wait},
                    timeout=httpx.Timeout(5.0, read=self._wait + 10.0)))
                self.lost += int(page.get("dropped", 0))
                for item in page["messages"]:
                    await self._queue.put(JournalEntry.from_json(item))
                position = int(page["next"])
                await self._queue.put(_Read(region.name, position))
                delay = 0.2
                continue
            except InvalidRequest:
                position = None  # the region's journal does not know our position: ask it again
            except NotFound as exc:
                if position is not None:  # it knew the consumer: deleted (before, not replicated yet)
                    await self._queue.put(_Gone(NotFound(f"consumer {self.name} was deleted ({region.name}: "
                                                         f"{exc.message})")))
                    return
            except (httpx.HTTPError, ValueError, KeyError, TypeError, GeofleetError):
                pass
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RETRY_MAX_S)
