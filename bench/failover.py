#!/usr/bin/env python3
"""Failover, fail-back and locate on a three-region fleet with simulated devices.

A throw-away fleet (us-east-1, eu-west-1, ap-southeast-1 on loopback, ``geofleet.drill.stage``)
gets ``--devices`` devices provisioned from addresses in 20 countries (each with its own key);
all of them run in this process with the device SDK (asyncio, aiomqtt), publishing telemetry at
QoS 1 every ``--interval`` seconds, and the application's merged stream of every region
collects it. Then:

1. ``kill``: us-east-1 is SIGKILLed. Failover time per device homed there = from the kill to
   the first QoS 1 message the device has acknowledged by another region. The region is
   restarted; fail-back time = from it answering ``/health`` again to the device's first
   acknowledged message at home (includes the devices' ``--min-stay``).
2. ``blackhole``: eu-west-1 is SIGSTOPped (its sockets stay open, nothing answers): the same,
   which now includes noticing the silence (``--keepalive``); then SIGCONT.
3. ``locate``: ``--locates`` calls of the application SDK's ``locate`` for random devices
   (HTTPS keep-alive to the nearest healthy region), one at a time: latency.
4. every device flushes its outbox; every message published must have reached the application:
   ``lost`` (and ``duplicates_dropped`` by the stream's dedup).

Aims (issue 5): failover p99 < 5 s for a killed region, < keep-alive + 5 s for a black hole,
no QoS 1 message lost. There is no baseline to compare against in this process.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from geofleet.device import FailoverOptions
from geofleet.drill import DrillResult, account, drill, stage


def phase(result: DrillResult) -> dict[str, Any]:
    return {"region": result.region, "devices_affected": result.affected,
            "failover_s": common.distribution(result.failover_s, digits=3),
            "failback_s": common.distribution(result.failback_s, digits=3),
            "during_outage": result.during}


async def run(args: Any, log: Any) -> dict[str, Any]:
    options = FailoverOptions(keepalive_s=args.keepalive, min_stay_s=args.min_stay, failback_interval_s=2.0)
    with tempfile.TemporaryDirectory(prefix="geofleet-bench-") as tmp:
        async with stage(Path(tmp) / "fleet", devices=args.devices, options=options, interval_s=args.interval,
                         progress=log) as on:
            killed = await drill(on.fleet, on.sim, on.app, on.collector, "us-east-1", mode="kill", progress=log,
                                 timeout=120)
            frozen = killed if args.kill_only else await drill(
                on.fleet, on.sim, on.app, on.collector, "eu-west-1", mode="blackhole", progress=log, timeout=120)
            names = [d.device_id for d in on.sim.devices]
            await on.app.locate(names[0])  # ranks the regions and opens the connection
            latencies = []
            for _ in range(args.locates):
                started = time.perf_counter()
                await on.app.locate(random.choice(names))
                latencies.append((time.perf_counter() - started) * 1000)
            await account(on.sim, on.app, on.collector, frozen, timeout=120)
    return {"kill": phase(killed), "blackhole": phase(frozen),
            "locate_ms": common.distribution(latencies, digits=2, count=True),
            "messages": {"published": frozen.published, "received": frozen.received, "lost": len(frozen.lost),
                         "lost_examples": frozen.lost[:5], "duplicates_dropped": frozen.duplicates_dropped}}


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=1000)
    parser.add_argument("--interval", type=common.positive(float), default=10.0, help="telemetry period (s)")
    parser.add_argument("--keepalive", type=common.positive(int), default=5, help="device keepalive_s")
    parser.add_argument("--min-stay", type=common.not_negative(float), default=10.0)
    parser.add_argument("--locates", type=common.positive(int), default=500)
    parser.add_argument("--kill-only", action="store_true", help="skip the black-hole phase")
    args = parser.parse_args()
    began, result = common.begin("failover", vars(args), (*common.PACKAGES, "aiomqtt"))
    result.update(asyncio.run(run(args, common.logger("failover"))))
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
