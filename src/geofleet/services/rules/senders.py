"""The senders that drain the rules outbox: one per target region for ``forward``, one for the
``http`` webhooks (and, through ``RetryingSender``, those of ``services.rules.aws_actions``).

A forward sender pushes its channel's rows in order, in batches, over the peer channel
(``POST /v1/forward``); the receiver answers how far it has taken them, and only then are those
rows deleted. A region that is down simply leaves the rows in place: the sender retries with
jittered backoff (at most ``FORWARD_BACKOFF_MAX_S`` apart) and empties the backlog when the
region is back; nothing is sent twice except a batch whose answer was lost, which the receiver
recognises (its position per origin and epoch). A row whose device's residency scope no longer
includes the target (it was queued before a ``device move`` or a narrowed scope) is not sent: it
is dead-lettered with the reason (``services.rules.residency``).

The webhook sender POSTs each row's payload; a failure (connection error, timeout, a status
other than 2xx) is retried with exponential backoff; after ``HttpPolicy.attempts`` tries the row
moves to the dead letters and the rule's errorAction runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from geofleet.domain.residency import WrongRegion
from geofleet.domain.rules import failure
from geofleet.domain.rules_sql import Message
from geofleet.services.rules.engine import RulesEngine, now_ms
from geofleet.services.rules.residency import Scopes, check_forward
from geofleet.store.rules_sqlite import OutboxRow, RulesStore

log = logging.getLogger(__name__)

FORWARD_BATCH = 200
FORWARD_BATCH_BYTES = 512 * 1024
"""Under the peer API's 1 MB body limit, base64 and JSON included."""
FORWARD_BACKOFF_MAX_S = 5.0
IDLE_CHECK_S = 5.0
"""A sender with nothing to do looks at its channel again after this long even if not woken."""

PostToPeer = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard a webhook (or SQS/SNS) sender tries. Tests and drills shorten it through the environment."""

    attempts: int = 5
    timeout_s: float = 5.0
    backoff_s: float = 0.5
    backoff_max_s: float = 60.0
    concurrency: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "GEOFLEET_RULES_HTTP") -> RetryPolicy:
        """``<prefix>_ATTEMPTS``, ``..._TIMEOUT_S``, ``..._BACKOFF_S`` override the defaults
        (``GEOFLEET_RULES_HTTP`` for webhooks, ``GEOFLEET_RULES_AWS`` for SQS/SNS)."""
        default = cls()
        return cls(attempts=max(1, int(environ.get(f"{prefix}_ATTEMPTS", default.attempts))),
                   timeout_s=float(environ.get(f"{prefix}_TIMEOUT_S", default.timeout_s)),
                   backoff_s=float(environ.get(f"{prefix}_BACKOFF_S", default.backoff_s)))


HttpPolicy = RetryPolicy
"""The name the webhook sender's policy had first."""


class _Wakeable:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def idle(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()


class ForwardSender(_Wakeable):
    def __init__(self, target: str, store: RulesStore, post: PostToPeer, scopes: Scopes) -> None:
        super().__init__()
        self.target = target
        self.channel = f"forward:{target}"
        self._store = store
        self._post = post
        self._scopes = scopes
        self.paused = False
        self.sent = 0
        self.out_of_scope = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        failures = 0
        while True:
            rows = [] if self.paused else self._store.batch(self.channel, FORWARD_BATCH, FORWARD_BATCH_BYTES)
            if not rows:
                await self.idle(IDLE_CHECK_S)
                continue
            rows = self._in_scope(rows)
            if not rows:
                continue
            try:
                answer = await self._post(self.target, "/v1/forward", {
                    "epoch": self._store.epoch,
                    "items": [{"seq": row.id, **row.body} for row in rows]})
                through = int(answer.get("through", 0))
            except Exception as error:  # any failure of the peer or the channel: keep the rows, retry
                failures += 1
                self.last_error = f"{type(error).__name__}: {error}"[:300]
                delay = min(FORWARD_BACKOFF_MAX_S, 0.1 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
                log.info("forward to %s failed (%s); %d message(s) wait, retry in %.1f s", self.target,
                         self.last_error, len(rows), delay)
                await self.idle(delay)
                continue
            failures = 0
            self.last_error = None
            refused = {int(r["seq"]): str(r.get("errorMessage", "")) for r in answer.get("refused") or ()
                       if isinstance(r, dict) and isinstance(r.get("seq"), int)}
            done = [row for row in rows if row.id <= through]
            now = now_ms()
            for row in done:
                if row.id in refused:
                    log.warning("forward to %s refused message %d of rule %s: %s", self.target, row.id,
                                row.body.get("rule"), refused[row.id])
                    self._store.dead_letter(self.channel, row, str(row.body.get("rule", "")),
                                            {"forward": {"region": self.target}}, refused[row.id], now)
            with self._store.atomic():
                self._store.remove(self.channel, [row.id for row in done if row.id not in refused])
            self.sent += len(done) - len(refused)

    def _in_scope(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows whose device may still have its data in the target; the others go to the
        dead letters now (their device's scope changed after they were queued)."""
        kept: list[OutboxRow] = []
        for row in rows:
            try:
                check_forward(self._scopes, row.device or str(row.body.get("clientId", "")), self.target)
            except WrongRegion as error:
                self.out_of_scope += 1
                log.warning("forward to %s: message %d of rule %s not sent: %s", self.target, row.id,
                            row.body.get("rule"), error.message)
                self._store.dead_letter(self.channel, row, str(row.body.get("rule", "")),
                                        {"forward": {"region": self.target}}, error.message, now_ms())
            else:
                kept.append(row)
        return kept

    def status(self) -> dict[str, Any]:
        return {"target": self.target, "paused": self.paused, "sent": self.sent, "outOfScope": self.out_of_scope,
                "lastError": self.last_error}


_RESOURCE_FIELD = {"http": "url", "sqs": "queueUrl", "sns": "targetArn"}


@dataclass(frozen=True, slots=True)
class Failed:
    """Why one delivery failed; ``permanent`` when retrying cannot help (the target refused this
    very message: too big, malformed for it), so the row is dead-lettered at once."""

    problem: str
    permanent: bool = False


class RetryingSender(_Wakeable):
    """Drains one channel whose rows are delivered one by one to an outside service (a webhook,
    SQS, SNS): up to ``policy.concurrency`` at once, each retried with exponential backoff, and
    after ``policy.attempts`` tries (or at once, for a refusal that no retry can change) moved to
    the dead letters, after which the rule's errorAction runs. A subclass says how to deliver
    one row (``attempt``) and how to name its target (``describe``)."""

    channel: str

    def __init__(self, store: RulesStore, engine: RulesEngine, policy: RetryPolicy) -> None:
        super().__init__()
        self._store = store
        self._engine = engine
        self._policy = policy
        self.delivered = 0
        self.retried = 0
        self.dead = 0

    async def close(self) -> None:
        """Release what the sender holds (connections); called once it is stopped."""

    async def attempt(self, body: dict[str, Any]) -> Failed | None:
        """Deliver one row; None when it was, otherwise what went wrong."""
        raise NotImplementedError

    def describe(self, body: dict[str, Any]) -> tuple[str, str]:
        """The action kind and the resource (URL, queue, topic) of a row, for dead letters and errors."""
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            now = now_ms()
            rows = self._store.batch(self.channel, self._policy.concurrency, FORWARD_BATCH_BYTES, due_by_ms=now)
            if not rows:
                due = self._store.next_due_ms(self.channel)
                await self.idle(IDLE_CHECK_S if due is None else max(0.0, min(IDLE_CHECK_S, (due - now) / 1000)))
                continue
            await asyncio.gather(*(self._deliver(row) for row in rows))

    async def _deliver(self, row: OutboxRow) -> None:
        body = row.body
        failed = await self.attempt(body)
        if failed is None:
            with self._store.atomic():
                self._store.remove(self.channel, [row.id])
            self.delivered += 1
            return
        attempts = row.attempts + 1
        if attempts < self._policy.attempts and not failed.permanent:
            self.retried += 1
            delay = min(self._policy.backoff_max_s, self._policy.backoff_s * 2 ** (attempts - 1))
            with self._store.atomic():
                self._store.retry_later(row.id, attempts, now_ms() + int(delay * random.uniform(0.75, 1.0) * 1000))
            return
        message = (f"{failed.problem} (not retried: the message itself is refused)" if failed.permanent
                   else f"{failed.problem} (gave up after {attempts} attempts)")
        rule = str(body.get("rule", ""))
        kind, resource = self.describe(body)
        if not self._store.dead_letter(self.channel, dataclasses.replace(row, attempts=attempts), rule,
                                       {kind: {_RESOURCE_FIELD.get(kind, "resource"): resource}}, message, now_ms()):
            return  # purged meanwhile (this region left its device's residency scope): nothing to report here
        self.dead += 1
        log.warning("rule %s: %s action to %s dead-lettered: %s", rule, kind, resource, message)
        error_action = body.get("errorAction")
        if error_action:
            original = Message(str(body.get("topic", "")), base64.b64decode(body.get("original", "")),
                               str(body.get("clientId", "")), "", row.created_ms)
            await self._engine.run_error_action(rule, error_action, original, [failure(kind, resource, message)])

    def status(self) -> dict[str, int]:
        return {"delivered": self.delivered, "retried": self.retried, "deadLettered": self.dead}


class HttpSender(RetryingSender):
    channel = "http"

    def __init__(self, store: RulesStore, engine: RulesEngine, policy: RetryPolicy) -> None:
        super().__init__(store, engine, policy)
        self._client = httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    def describe(self, body: dict[str, Any]) -> tuple[str, str]:
        return "http", str(body["url"])

    async def attempt(self, body: dict[str, Any]) -> Failed | None:
        headers = {h["key"]: h["value"] for h in body.get("headers") or ()}
        headers.setdefault("content-type", "application/json")
        try:
            # streamed and not read: a webhook's answer is its status alone, whatever it sends back
            async with self._client.stream("POST", str(body["url"]), content=base64.b64decode(body["payload"]),
                                           headers=headers) as response:
                status = response.status_code
            return None if 200 <= status < 300 else Failed(f"the webhook answered HTTP {status}")
        except httpx.HTTPError as error:
            return Failed(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


class RuleSenders:
    """Every sender of a region, started and stopped together."""

    def __init__(self, targets: list[str], store: RulesStore, engine: RulesEngine, post: PostToPeer,
                 policy: RetryPolicy, *, others: Sequence[RetryingSender], scopes: Scopes) -> None:
        """``others``: the senders of further durable kinds (``sqs``, ``sns``), one per channel;
        ``scopes``: the devices' residency scopes (a forward goes only where its device's data may rest)."""
        self.forwards = {target: ForwardSender(target, store, post, scopes) for target in targets}
        self.http = HttpSender(store, engine, policy)
        self.others = list(others)
        self._store = store
        self._engine = engine
        for sender in self.forwards.values():
            engine.on_wake(sender.channel, sender.wake)
        for retrying in (self.http, *self.others):
            engine.on_wake(retrying.channel, retrying.wake)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        senders: list[ForwardSender | RetryingSender] = [*self.forwards.values(), self.http, *self.others]
        self._tasks = [asyncio.create_task(_guarded(s.run, type(s).__name__)) for s in senders]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for retrying in (self.http, *self.others):
            await retrying.close()

    def pause(self, target: str, paused: bool) -> None:
        self.forwards[target].paused = paused
        self.forwards[target].wake()

    def status(self) -> dict[str, Any]:
        return {"rules": self._engine.active(), "counters": dict(self._engine.counters),
                "outbox": self._store.depth(), "forwards": [s.status() for s in self.forwards.values()],
                "http": self.http.status(), **{s.channel: s.status() for s in self.others}}


async def _guarded(run: Callable[[], Awaitable[None]], name: str) -> None:
    """A sender outlives any one bad round (it logs and starts again after a pause)."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it", name)
            await asyncio.sleep(1.0 + random.random())
        else:
            return

