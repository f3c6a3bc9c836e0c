#!/usr/bin/env python3
"""Stored size and update latency of shadows whose stored form could grow: deletes of absent keys, many leaves.

What is measured, for each case below: the bytes of the shadow's stored row (the ``doc`` column
of the region's SQLite ``shadows`` table, which holds the stamped leaves replication merges) and
the latency of small (about 30-byte) updates to the shadow afterwards, as median/p90/p99/max in
milliseconds. A small update's latency is what one device's update costs the region's event
loop: the service reads the shadow, merges the write, rebuilds the document, and writes the row
and its change-log entry in one SQLite transaction.

Cases, all in one process so that they compare with each other:

- ``baseline``: a shadow holding one reported field;
- ``absent_nulls``: the same shadow after 40 updates that each set about 450 absent keys to
  ``null`` (the attack of the hardening issue: the visible document stays one field);
- ``live_leaves``: a shadow whose reported section holds ``--live-leaves`` fields (an 8 KB
  document holds about 900 fields like ``"f123":0``);
- ``tombstones``: a shadow that has set and deleted fields until it holds about
  ``--tombstones`` tombstones (within the retention period, before any is collected).

How: the region's real shadow service (``geofleet.services.shadows.ShadowService``) on a real
SQLite file in a temporary directory, called directly (no MQTT, no TLS: those costs are the
same for every case and are measured by ``shadow_updates.py``); its MQTT publishes go to a
function that counts them. Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import common

from geofleet.domain.hlc import Clock
from geofleet.domain.horizon import DEFAULT_GRACE_S, TombstoneHorizon
from geofleet.domain.names import CLASSIC, ThingName
from geofleet.services.shadows import ShadowService
from geofleet.store.sqlite import SqliteStore

log = common.logger("shadow_tombstones")

Setup = Callable[[ShadowService, ThingName], Awaitable[None]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--updates", type=common.positive(int), default=200,
                        help="small updates timed per case (default 200)")
    parser.add_argument("--live-leaves", type=common.positive(int), default=800,
                        help="fields of the live_leaves case (default 800)")
    parser.add_argument("--tombstones", type=common.positive(int), default=3000,
                        help="tombstones of the tombstones case (default 3000)")
    parser.add_argument("--null-updates", type=common.positive(int), default=40,
                        help="updates of nulls on absent keys in the absent_nulls case (default 40)")
    return parser.parse_args(argv)


def body(reported: dict[str, Any]) -> bytes:
    return json.dumps({"state": {"reported": reported}}, separators=(",", ":")).encode()


async def baseline(service: ShadowService, thing: ThingName) -> None:
    await service.update(thing, CLASSIC, body({"on": True}))


def absent_nulls(updates: int) -> Setup:
    async def setup(service: ShadowService, thing: ThingName) -> None:
        await baseline(service, thing)
        for n in range(updates):
            await service.update(thing, CLASSIC, body({f"k{n * 450 + i}": None for i in range(450)}))
    return setup


def live_leaves(count: int) -> Setup:
    async def setup(service: ShadowService, thing: ThingName) -> None:
        for first in range(0, count, 500):
            await service.update(thing, CLASSIC, body({f"f{i}": 0 for i in range(first, min(count, first + 500))}))
    return setup


def tombstones(count: int) -> Setup:
    async def setup(service: ShadowService, thing: ThingName) -> None:
        await baseline(service, thing)
        for first in range(0, count, 400):
            keys = [f"d{i}" for i in range(first, min(count, first + 400))]
            await service.update(thing, CLASSIC, body(dict.fromkeys(keys, 0)))
            await service.update(thing, CLASSIC, body(dict.fromkeys(keys)))
    return setup


def stored_bytes(path: Path, thing: ThingName) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT length(doc) FROM shadows WHERE thing = ?", (thing,)).fetchone()
    return int(row[0])


async def run_case(name: str, setup: Setup, updates: int, root: Path) -> dict[str, Any]:
    published = 0

    async def publish(_: str, __: bytes) -> None:
        nonlocal published
        published += 1

    path = root / f"{name}.db"
    store = SqliteStore(path)
    service = ShadowService(store, Clock(), "us-east-1", publish, TombstoneHorizon(DEFAULT_GRACE_S))
    thing = ThingName(f"bench-{name}")
    try:
        started = time.perf_counter()
        await setup(service, thing)
        setup_s = time.perf_counter() - started
        size = stored_bytes(path, thing)
        latencies = []
        for i in range(updates):
            payload = body({"t": i})
            began = time.perf_counter_ns()
            await service.update(thing, CLASSIC, payload)
            latencies.append(time.perf_counter_ns() - began)
        got = service.get(thing, CLASSIC)
        visible = len(json.dumps(got["state"], separators=(",", ":")))
    finally:
        store.close()
    result = {"stored_bytes": size, "visible_state_bytes": visible, "setup_seconds": round(setup_s, 2),
              "small_update_ms": common.distribution(common.ns_to_ms(latencies), digits=3, count=True)}
    log(f"{name}: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, result = common.begin("shadow_tombstones", {
        "updates": args.updates, "live_leaves": args.live_leaves, "tombstones": args.tombstones,
        "null_updates": args.null_updates, "keys_per_null_update": 450})
    cases: dict[str, Setup] = {
        "baseline": baseline,
        "absent_nulls": absent_nulls(args.null_updates),
        "live_leaves": live_leaves(args.live_leaves),
        "tombstones": tombstones(args.tombstones),
    }
    with tempfile.TemporaryDirectory(prefix="geofleet-bench-") as root:
        result["cases"] = {name: asyncio.run(run_case(name, setup, args.updates, Path(root)))
                           for name, setup in cases.items()}
    base = result["cases"]["baseline"]["small_update_ms"]["p50"]
    result["p50_vs_baseline"] = {name: round(case["small_update_ms"]["p50"] / base, 2)
                                 for name, case in result["cases"].items() if base}
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
