#!/usr/bin/env python3
"""Scoped replication (data residency) against today's copy-everything, in one run on one fleet.

The fleet is a throw-away three-region fleet (``geofleet.cluster.LocalFleet``). Two classes of
``--devices`` devices each, created in eu-west-1 over the admin API: ``everywhere`` (no
``geofleet:regions``: today's behaviour, every region holds their data) and ``scoped``
(``geofleet:regions`` = ``--scope``, by default eu-west-1 and us-east-1: an EU rule with one
permitted failover region, so that replication to an in-scope peer can be timed; ap-southeast-1
is outside the scope). Every write is a shadow update (``POST /things/<name>/shadow``) made in
eu-west-1. Phases:

1. ``lag``: ``--samples`` writes per class, 20-40 ms apart; after each, a thread per in-scope
   target region (everywhere: us-east-1 and ap-southeast-1; scoped: the scope's other regions)
   polls ``GET /things/<name>/shadow`` every ``--poll-ms`` until it shows the write. Lag = from
   just before the write to the first answer that shows it (it includes the write's round trip
   and has the resolution of one poll). The out-of-scope region is asked too, at the end, and
   must hold no shadow of a scoped device.
2. ``load``: both targets pause their link from eu-west-1 (``POST /replication/pause``), every
   device writes ``--updates`` shadow updates in eu-west-1, and eu-west-1's store is copied
   (SQLite backup API) with its change log untruncated. The links resume; ``catch_up_s`` is the
   time until both targets' cursors reach eu-west-1's head.
3. ``shipped`` (same process, on the copy): what eu-west-1's ``/v1/changes`` serves each peer,
   read the way the peer API reads it (``store.changes`` in batches of 1000, then the residency
   filter ``PeerView.change`` and ``change_to_json``, then ``json.dumps`` of the batch) against
   today's (the same without the filter): changes and bytes shipped per peer and per device
   class, and changes read per second with and without the filter (the filter's cost on the
   server; best of ``--repeat`` passes).
4. ``anti_entropy``: one ``POST /replication/sync`` in each region (per-scope digests compared
   with both peers), its wall time and the differing buckets it found.
5. ``audit``: ``geofleet residency audit`` over the fleet's files: it must report nothing.

The regions, the writer and the pollers share this machine's CPUs (``environment.cpus``). Prints
one JSON object on stdout; progress goes to stderr. Every wait has a deadline (``--timeout``);
the fleet is stopped and deleted at the end. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.domain.residency import Scope
from geofleet.replication.scoping import PeerView
from geofleet.replication.wire import change_to_json
from geofleet.residency_audit import audit_data_dir
from geofleet.store.sqlite import SqliteStore
from tests.helpers import wait_for

log = common.logger("residency")
WRITER = "eu-west-1"
BATCH = 1000  # the peer API's MAX_BATCH


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=100, help="devices per class (default 100)")
    parser.add_argument("--scope", default="eu-west-1,us-east-1",
                        help="the scoped devices' geofleet:regions (default eu-west-1,us-east-1)")
    parser.add_argument("--samples", type=common.positive(int), default=60, help="lag samples per class (default 60)")
    parser.add_argument("--updates", type=common.positive(int), default=20,
                        help="shadow updates per device in the load phase (default 20)")
    parser.add_argument("--poll-ms", type=common.positive(float), default=5.0, help="lag poll interval (default 5)")
    parser.add_argument("--repeat", type=common.positive(int), default=5,
                        help="passes of the shipped phase (default 5)")
    parser.add_argument("--timeout", type=common.positive(float), default=60.0, help="deadline of every wait (s)")
    args = parser.parse_args(argv)
    scope = Scope.of(args.scope.split(","))
    if scope.regions is None or WRITER not in scope.regions or not scope.regions <= set(common.REGIONS) \
            or scope.regions == set(common.REGIONS):
        parser.error(f"--scope must name {WRITER} and leave out at least one of {', '.join(common.REGIONS)}")
    args.scope = scope
    return args


def shadow_body(value: int) -> bytes:
    return json.dumps({"state": {"reported": {"n": value, "pad": "x" * 64}}}).encode()


def reported(api: AdminClient, thing: str) -> Any:
    try:
        return api.call("GET", f"/things/{thing}/shadow")["state"]["reported"].get("n")
    except Exception:  # 404 before the first write arrives; 421 outside the scope
        return None


def time_lag(fleet: LocalFleet, thing: str, targets: list[str], value: int, poll_s: float, timeout: float
             ) -> dict[str, float]:
    lags: dict[str, float] = {}

    def poll(region: str) -> None:
        with AdminClient(fleet.data, region) as api:
            wait_for(lambda: reported(api, thing) == value, timeout, f"{thing}={value} in {region}", poll_s)
            lags[region] = (time.perf_counter() - started) * 1000

    with AdminClient(fleet.data, WRITER) as writer:
        started = time.perf_counter()
        writer.call("POST", f"/things/{thing}/shadow", content=shadow_body(value))
        threads = [threading.Thread(target=poll, args=(r,)) for r in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if len(lags) != len(targets):
        raise RuntimeError(f"{thing}: a poller failed (lags {lags})")
    return lags


def phase_lag(fleet: LocalFleet, classes: dict[str, tuple[list[str], list[str]]], args: argparse.Namespace
              ) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, (things, targets) in classes.items():
        samples: dict[str, list[float]] = {r: [] for r in targets}
        for i in range(args.samples):
            lags = time_lag(fleet, things[i % len(things)], targets, 1_000_000 + i, args.poll_ms / 1000, args.timeout)
            for region, lag in lags.items():
                samples[region].append(lag)
            time.sleep(random.uniform(0.02, 0.04))  # spacing between samples, not synchronisation
        result[name] = {region: common.distribution(values, digits=1, count=True) for region, values in samples.items()}
        log(f"lag {name}: " + ", ".join(f"{r} p50 {d['p50']} ms" for r, d in result[name].items()))
    return result


def backed_up(source: Path, copy: Path) -> None:
    with sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)


def phase_load(fleet: LocalFleet, things: list[str], others: list[str], args: argparse.Namespace, copy: Path
               ) -> dict[str, Any]:
    for region in others:
        with AdminClient(fleet.data, region) as api:
            api.call("POST", "/replication/pause", params={"peer": WRITER})
    started = time.perf_counter()
    with AdminClient(fleet.data, WRITER) as writer:
        for n in range(args.updates):
            for thing in things:
                writer.call("POST", f"/things/{thing}/shadow", content=shadow_body(n))
    write_s = time.perf_counter() - started
    log(f"{len(things) * args.updates} writes in {write_s:.1f} s with the links paused; copying {WRITER}'s store")
    backed_up(fleet.data.region(WRITER).store, copy)
    with AdminClient(fleet.data, WRITER) as writer:
        head = int(writer.call("GET", "/replication/status")["head"])
    resumed = time.perf_counter()
    for region in others:
        with AdminClient(fleet.data, region) as api:
            api.call("POST", "/replication/resume", params={"peer": WRITER})

    def caught_up() -> bool:
        for region in others:
            with AdminClient(fleet.data, region) as api:
                link = api.call("GET", "/replication/status")["links"][WRITER]
            if int(link.get("cursor") or 0) < head:
                return False
        return True

    wait_for(caught_up, args.timeout, "both targets caught up with eu-west-1", 0.02)
    return {"writes": len(things) * args.updates, "write_s": round(write_s, 2),
            "writes_per_s": round(len(things) * args.updates / write_s, 1), "writer_head": head,
            "catch_up_s": round(time.perf_counter() - resumed, 2)}


def serve(store: SqliteStore, view: PeerView | None, peer: str, region: str) -> dict[str, Any]:
    """Read the whole log as ``/v1/changes`` serves it to ``peer`` (``view`` None: today's, unfiltered)."""
    after, changes, shipped, size, by_class = 0, 0, 0, 0, {"everywhere": 0, "scoped": 0}
    started = time.perf_counter()
    while found := store.changes(after, BATCH):
        shown = [change_to_json(seen) for change in found
                 if (seen := change if view is None else view.change(change, peer)) is not None]
        size += len(json.dumps({"region": region, "head": found[-1].seq, "through": found[-1].seq,
                                "changes": shown}, separators=(",", ":")))
        for item in shown:
            by_class["scoped" if item["key"].startswith("scoped-") else "everywhere"] += 1
        changes += len(found)
        shipped += len(shown)
        after = found[-1].seq
    took = time.perf_counter() - started
    return {"changes_read": changes, "changes_shipped": shipped, "bytes_shipped": size, "shipped_by_class": by_class,
            "seconds": took, "changes_read_per_s": round(changes / took) if took else None}


def phase_shipped(copy: Path, peers: list[str], repeat: int) -> dict[str, Any]:
    store = SqliteStore(copy)
    try:
        view = PeerView(store, WRITER)
        result: dict[str, Any] = {}
        for peer in peers:
            scoped = min((serve(store, view, peer, WRITER) for _ in range(repeat)), key=lambda r: r["seconds"])
            today = min((serve(store, None, peer, WRITER) for _ in range(repeat)), key=lambda r: r["seconds"])
            for run in (scoped, today):
                run["seconds"] = round(run["seconds"], 4)
            result[peer] = {"scoped": scoped, "today": today,
                            "filter_cost_pct": round(100 * (scoped["seconds"] / today["seconds"] - 1), 1)}
            log(f"{WRITER} -> {peer}: ships {scoped['changes_shipped']}/{today['changes_shipped']} changes, "
                f"{scoped['bytes_shipped']}/{today['bytes_shipped']} bytes (scoped/today)")
        return result
    finally:
        store.close()


def phase_anti_entropy(fleet: LocalFleet) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for region in common.REGIONS:
        with AdminClient(fleet.data, region, timeout=60.0) as api:
            started = time.perf_counter()
            peers = api.call("POST", "/replication/sync")["peers"]
            took = (time.perf_counter() - started) * 1000
        result[region] = {"ms": round(took, 1),
                          "differing_buckets": {p: r.get("differingBuckets", r.get("error")) for p, r in peers.items()}}
    log("anti-entropy rounds: " + ", ".join(f"{r} {v['ms']} ms" for r, v in result.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scope: Scope = args.scope
    outside = [r for r in common.REGIONS if not scope.includes(r)]
    config = {"devices_per_class": args.devices, "scope": scope.encode(), "samples": args.samples,
              "updates": args.updates, "poll_ms": args.poll_ms, "writer": WRITER, "outside_scope": outside}
    began, result = common.begin("residency", config)
    everywhere = [f"every-{i}" for i in range(args.devices)]
    scoped = [f"scoped-{i}" for i in range(args.devices)]
    others = [r for r in common.REGIONS if r != WRITER]
    with common.throwaway_fleet(common.REGIONS, log) as fleet, tempfile.TemporaryDirectory() as tmp:
        with AdminClient(fleet.data, WRITER) as api:
            for thing in everywhere:
                api.call("POST", f"/things/{thing}", json={"attributes": {"owner": "someone"}})
            for thing in scoped:
                api.call("POST", f"/things/{thing}", json={"attributes": {"owner": "someone",
                                                                         "geofleet:regions": scope.encode()}})
        for region in others:
            with AdminClient(fleet.data, region) as api:
                wait_for(lambda: _exists(api, everywhere[-1]) and _exists(api, scoped[-1]),
                         args.timeout, f"the things in {region}", 0.05)
        classes = {"everywhere": (everywhere, others),
                   "scoped": (scoped, [r for r in others if scope.includes(r)])}
        result["lag_ms"] = phase_lag(fleet, classes, args)
        result["load"] = phase_load(fleet, everywhere + scoped, others, args, Path(tmp) / "copy.db")
        result["shipped"] = phase_shipped(Path(tmp) / "copy.db", others, args.repeat)
        result["anti_entropy"] = phase_anti_entropy(fleet)
        with AdminClient(fleet.data, outside[0]) as api:
            result["outside_scope_shadows"] = sum(reported(api, t) is not None for t in scoped)
        report = audit_data_dir(fleet.data)
        result["audit"] = {"clean": report.clean, "checked": report.checked, "violations": len(report.violations)}
        log(report.text().splitlines()[-1])
    return common.finish(result, began)


def _exists(api: AdminClient, thing: str) -> bool:
    try:
        api.call("GET", f"/things/{thing}")
    except Exception:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
