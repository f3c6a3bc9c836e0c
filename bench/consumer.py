#!/usr/bin/env python3
"""Durable consumers: lag from a device's publish to the consumer's yield, and the journal's cost per message.

What is measured, on a throw-away one-region fleet (``geofleet up`` on loopback), with one
publishing device (paho, mutual TLS, QoS 1, ``--inflight`` messages in flight) and the
application SDK's ``FleetApp.consumer`` reading in this process:

1. throughput with no consumer (``none``: nothing matches, nothing is journaled), with a
   consumer record whose filter matches every message but no reader (``journal``: each message
   is appended to the journal before its PUBACK) and with the SDK's consumer attached too
   (``consumer``: appended and read), in alternating rounds (none, journal, consumer, consumer,
   journal, none, ...) of ``--messages`` messages, so background load hits all alike. The rate
   is publish of the first to PUBACK of the last; the median over rounds is reported, and the
   cost per message of ``X`` is ``1/rate(X) - 1/rate(none)``. The region process's CPU time per
   message of each kind is reported too (``region_cpu_us_per_message``, from /proc at clock-tick
   resolution; a ``journal`` round's figure includes reading its backlog afterwards): the
   consumer runs in this process, next to the publishing device, so the ``consumer`` rate also
   pays for the client's CPU on a small machine;
2. consumer lag under that load: publish call to the SDK's yield, per message (mostly
   queueing behind the window), and unloaded: ``--lag-messages`` sent one at a time, each when
   the previous one was yielded (the long poll's wake-up, the read and the hand-over);
3. the rate at which a consumer that was away reads the backlog a ``journal`` round left
   (``backlog_read_msgs_per_s``, nothing being published meanwhile);
4. loss: messages of a consumer round not yielded within ``--drain`` seconds (must be 0).

The device and the consumer share the machine's CPUs with the region. Prints one JSON object on
stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import deque
from typing import Any

import common

from geofleet.app import Consumer, FleetApp
from geofleet.client import fleet_app

REGION = "us-east-1"
DEVICE = "bench-pub"
TOPIC = f"dt/{DEVICE}/usage"
log = common.logger("consumer")
KINDS = ("none", "journal", "consumer")
"""Rounds: nothing journaled; journaled (a consumer exists) but nobody reads; journaled and read."""


class Publisher:
    """The device: QoS 1 publishes carrying their number and the publish time."""

    def __init__(self, fleet: Any, inflight: int) -> None:
        self.inflight = inflight
        self.session = common.Session(DEVICE, common.devices_dir(fleet))
        self.session.client.max_inflight_messages_set(inflight)
        self.session.start(common.region_int(fleet, REGION, "mqtt_port"))
        self.session.wait_connected(10)

    def batch(self, first: int, count: int) -> float:
        """Publish ``count`` messages, at most ``inflight`` unacknowledged (so a message's
        timestamp is taken when it can be sent, not while it waits in paho's queue); seconds from
        the first publish to the last PUBACK."""
        started = time.perf_counter()
        pending: deque[Any] = deque()
        for i in range(count):
            if len(pending) >= self.inflight:
                pending.popleft().wait_for_publish(30)
            pending.append(self.one(first + i))
        for info in pending:
            info.wait_for_publish(30)
        return time.perf_counter() - started

    def acknowledged(self, n: int) -> None:
        """Publish one message and wait for its PUBACK."""
        self.one(n).wait_for_publish(10)

    def one(self, n: int) -> Any:
        payload = json.dumps({"n": n, "t": time.perf_counter_ns()})
        return self.session.client.publish(TOPIC, payload, qos=1)


class Reader:
    """The consumer, yielding in a task; records each message's lag by its number."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.lag_ms: dict[int, float] = {}
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.consumer:
            body = message.json()
            self.lag_ms[int(body["n"])] = (time.perf_counter_ns() - int(body["t"])) / 1e6
            self.arrived.set()

    async def wait_for(self, numbers: range, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        while True:
            self.arrived.clear()  # before the check: a message yielded after it sets it again
            if all(n in self.lag_ms for n in numbers) or time.monotonic() >= deadline:
                return
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def run(args: argparse.Namespace, fleet: Any) -> dict[str, Any]:
    publisher = await asyncio.to_thread(Publisher, fleet, args.inflight)
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    region_cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    pid = common.region_int(fleet, REGION, "pid")
    loaded_lag: list[float] = []
    backlog_rates: list[float] = []
    lost = 0
    n = 0
    async with fleet_app(fleet.data.root) as app:
        await asyncio.to_thread(publisher.batch, n, 200)  # warm-up: TLS session, caches
        n += 200
        order = [kind for r in range(args.rounds) for kind in (KINDS if r % 2 == 0 else KINDS[::-1])]
        for i, kind in enumerate(order):
            numbers = range(n, n + args.messages)
            cpu_before = common.process_cpu_seconds(pid) or 0.0
            if kind == "none":
                seconds = await asyncio.to_thread(publisher.batch, n, args.messages)
            elif kind == "journal":
                await app.create_consumer(f"bench-{i}", [f"dt/{DEVICE}/#"])
                seconds = await asyncio.to_thread(publisher.batch, n, args.messages)
                # then the backlog the round left, read by a consumer that was away
                async with app.consumer(f"bench-{i}") as consumer:
                    reader = Reader(consumer)
                    started = time.perf_counter()
                    await reader.wait_for(numbers, args.drain)
                    read = sum(1 for k in numbers if k in reader.lag_ms)
                    backlog_rates.append(read / (time.perf_counter() - started))
                    await reader.close()
                await app.delete_consumer(f"bench-{i}")
            else:
                async with app.consumer(f"bench-{i}", filters=[f"dt/{DEVICE}/#"]) as consumer:
                    reader = Reader(consumer)
                    seconds = await asyncio.to_thread(publisher.batch, n, args.messages)
                    await reader.wait_for(numbers, args.drain)
                    await reader.close()
                await app.delete_consumer(f"bench-{i}")
                loaded_lag += [reader.lag_ms[k] for k in numbers if k in reader.lag_ms]
                lost += sum(1 for k in numbers if k not in reader.lag_ms)
            rates[kind].append(args.messages / seconds)
            region_cpu[kind].append(((common.process_cpu_seconds(pid) or 0.0) - cpu_before) / args.messages)
            log(f"round {i + 1}/{len(order)} {kind}: {args.messages / seconds:.0f} msgs/s")
            n += args.messages
        unloaded = await unloaded_lag(app, publisher, n, args.lag_messages, args.drain)
    publisher.session.stop()
    median = {kind: statistics.median(rates[kind]) for kind in KINDS}
    return {
        "throughput_msgs_per_s": {**{k: round(v) for k, v in median.items()},
                                  "rounds": {k: [round(r) for r in v] for k, v in rates.items()}},
        "cost_us_per_message": {kind: round((1 / median[kind] - 1 / median["none"]) * 1e6, 1)
                                for kind in KINDS[1:]},
        "throughput_change": {kind: round(median[kind] / median["none"] - 1, 3) for kind in KINDS[1:]},
        "region_cpu_us_per_message": {kind: round(statistics.median(v) * 1e6, 1) for kind, v in region_cpu.items()},
        "backlog_read_msgs_per_s": round(statistics.median(backlog_rates)),
        "lag_under_load_ms": common.distribution(loaded_lag, digits=2, count=True),
        "lag_unloaded_ms": common.distribution(unloaded, digits=2, count=True),
        "lost": lost,
        "unexpected_disconnects": publisher.session.disconnects,
    }


async def unloaded_lag(app: FleetApp, publisher: Publisher, first: int, count: int, drain_s: float) -> list[float]:
    if count == 0:
        return []
    async with app.consumer("bench-unloaded", filters=[f"dt/{DEVICE}/#"]) as consumer:
        reader = Reader(consumer)
        for k in range(first, first + count):
            await asyncio.to_thread(publisher.acknowledged, k)
            await reader.wait_for(range(k, k + 1), drain_s)
        await reader.close()
    await app.delete_consumer("bench-unloaded")
    return list(reader.lag_ms.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--messages", type=common.positive(int), default=3000, help="messages per round (3000)")
    parser.add_argument("--rounds", type=common.positive(int), default=3,
                        help="rounds of each kind, alternating (default 3: 6 rounds)")
    parser.add_argument("--inflight", type=common.positive(int), default=20, help="paho's QoS 1 in-flight limit (20)")
    parser.add_argument("--lag-messages", type=common.not_negative(int), default=300,
                        help="messages sent one at a time for the unloaded lag; 0 skips it (300)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait for the consumer before counting messages lost (30)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, result = common.begin("consumer", {
        "messages": args.messages, "rounds": args.rounds, "inflight": args.inflight,
        "lag_messages": args.lag_messages, "region": REGION, "topic": TOPIC})
    with common.throwaway_fleet((REGION,), log) as fleet:
        common.create_devices(fleet, [DEVICE], REGION)
        result["results"] = asyncio.run(run(args, fleet))
    log(json.dumps(result["results"]))
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
