#!/usr/bin/env python3
"""Replication between the regions of a fleet: how long a write takes to show up in the other
regions, at rest and under load; how fast a revocation reaches every region; and how fast the
regions agree again after a partition.

The fleet is a throw-away three-region fleet (``geofleet.cluster.LocalFleet``: ``geofleet up``
with us-east-1, eu-west-1 and ap-southeast-1 on free loopback ports). Every admin call goes
over HTTPS (verified against the fleet root) with the admin token. Four phases:

1. ``at_rest``: ``--samples`` times, one thing attribute update (``PATCH /things/lag-probe``)
   in us-east-1, then ``GET /things/lag-probe`` in eu-west-1 and in ap-southeast-1 (a thread
   each, one GET every ``--poll-ms``) until it shows the new value. Lag = from just before the
   PATCH is sent to the answer of the first GET that shows it: it includes the PATCH round trip
   (``write_ms``) and has a resolution of about one GET round trip (``get_ms``) plus one poll
   interval. Samples are 10-30 ms apart, so replication is idle (long-polling) when each write
   is made. The target's own figure (``links.us-east-1.lagMs`` of ``GET /replication/status``:
   from the write's timestamp in the source to its apply in the target) is read after each
   sample (``status_lag_ms``). Polling that tightly loads the targets, so ``--quiet-samples``
   more writes are made without polling: 50 ms after each, the targets' status is read until it
   shows one more change applied, and its lagMs is recorded (``unobserved_status_lag_ms``).
2. ``under_load``: a writer process PATCHes 100 things in us-east-1 on an open-loop schedule of
   ``--rate`` writes/s for ``--seconds`` over ``--connections`` HTTP/1.1 keep-alive connections
   (at most one request in flight on each; a write due after the window is not sent, nor one
   that would start after it; how late writes start is ``behind_schedule_ms``). Every
   ``--probe-every``-th write goes to a probe thing instead, which a thread of this process
   polls in eu-west-1 (one GET every ``--load-poll-ms``): ``end_to_end_lag_ms`` = from sending
   the probe write to the first poll answer showing it (or a later probe write), and
   ``visible_after_ack_ms`` = the same from the write's answer. Meanwhile another thread reads
   ``/replication/status`` of eu-west-1 and ap-southeast-1 and the CPU time of every region
   process every 100 ms. Reported: the achieved write rate, write round trips, those lags, the
   lagMs samples taken while writing, the largest backlog (as of each link's last pull), the
   time from the last write until a status sample saw both replicas' cursors at us-east-1's log
   head (``catch_up_s``), the CPU use of each region process and the source's CPU per write.
   Then (``load_without_replication``, ``--baseline-seconds``) the same writer while both
   targets pause their links from us-east-1, so nobody pulls its log: what replication costs
   the source; then the links resume and ``catch_up_s`` is how long the backlog takes to apply.
   The writer speaks HTTP/1.1 itself (``common.Http1``): httpx's async client cost 2-5 ms of CPU
   per request on the 2-core machine this was written on, more than the region spends on a
   write, against about 0.2 ms for ``Http1``.
3. ``revocation``: ``--revocations`` fresh devices (``geofleet device create`` in us-east-1). For
   each: one paho-mqtt session (mutual TLS, client id = thing name) in eu-west-1 and one in
   ap-southeast-1, then ``POST /certificates/<id>/revoke`` in us-east-1. From just before that
   request: until each session's ``on_disconnect`` (``disconnected_ms``), and until a fresh
   CONNECT with the same certificate and client id is refused in that region (``refused_ms``).
   The CONNECT probes start once the region has closed the session (a CONNECT with the same
   client id would take an open session over), so ``refused_ms`` >= ``disconnected_ms``.
4. ``partition``: ap-southeast-1 stops applying changes from both others (``POST
   /replication/pause``) and both stop applying changes from it (``POST
   /replication/pause?peer=ap-southeast-1``). For ``--partition-seconds`` one thread per region
   writes ``--partition-rate`` changes/s: new things (20 %), attribute updates of 30 shared
   things (60 %: all regions write the same attribute, last writer wins) and reported-state
   updates of the shared things' shadows (20 %). Then every link resumes. From just before the
   first resume: until every region's cursor of every peer's log reaches that peer's head
   (``caught_up_s``); until ``GET /things`` lists the same names with the same attributes in all
   three (``things_identical_s``; checked every 0.5 s until caught up, then every 50 ms); and
   until one round of ``POST /replication/sync`` in all three regions finds 0 differing digest
   buckets with every peer (``sync_clean_s``; the rounds start once the logs are caught up and
   the things identical, and the buckets the first round found differing are reported: anything
   but 0 there is something log shipping missed). Last, ``final`` compares the whole thing
   records (ARNs aside) and the shared things' shadow states across the regions.

The regions, the writer and the pollers share this machine's CPUs (``environment.cpus``), and
the pollers add load to the regions they poll: the figures include that contention.

Prints one JSON object on stdout; progress goes to stderr. Every wait has a deadline
(``--timeout``); the fleet is stopped and deleted at the end. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, TypeVar

import common
import paho.mqtt.client as mqtt

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.domain.errors import GeofleetError
from tests.helpers import wait_for

REGIONS = common.REGIONS
SOURCE = REGIONS[0]
TARGETS = REGIONS[1:]
ISOLATED = REGIONS[2]
PROBE = "lag-probe"
LOAD_PROBE = "load-probe"
LOAD_THINGS = 100
SHARED_THINGS = 30
PHASES = ("at_rest", "under_load", "revocation", "partition")
STATUS_INTERVAL_S = 0.1

T = TypeVar("T")


log = common.logger("replication")


# -- statistics (waiting: tests.helpers.wait_for, shared with the tests) -----------------------


def summary(values_ms: Iterable[float]) -> dict[str, float | int | None]:
    """This script's figures: count, p50, p90, p99, max and mean, to 0.01 ms."""
    return common.distribution(values_ms, digits=2, count=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- the fleet -------------------------------------------------------------------------------


def attribute(api: AdminClient, thing: str, key: str) -> int | None:
    """An integer attribute of a thing in one region; None while the region lacks the thing."""
    try:
        value = api.call("GET", f"/things/{thing}")["attributes"].get(key)
    except GeofleetError as error:
        if error.status == 404:
            return None
        raise
    return None if value is None else int(value)


def shows(api: AdminClient, thing: str, value: int) -> Callable[[], bool]:
    """A condition: the thing's ``n`` attribute in this region is ``value``."""
    return lambda: attribute(api, thing, "n") == value


def exists(api: AdminClient, thing: str) -> bool:
    try:
        api.call("GET", f"/things/{thing}")
    except GeofleetError as error:
        if error.status == 404:
            return False
        raise
    return True


def link(api: AdminClient, source: str) -> dict[str, Any]:
    status: dict[str, Any] = api.call("GET", "/replication/status")["links"][source]
    return status


# -- 1. lag at rest --------------------------------------------------------------------------


def poll_until(api: AdminClient, thing: str, value: int, start: float, poll_s: float, timeout: float,
               get_ms: list[float]) -> float | None:
    """ms from ``start`` to the first GET answer in which the thing's ``n`` is >= ``value``."""
    deadline = start + timeout
    while True:
        sent = time.monotonic()
        seen = attribute(api, thing, "n")
        now = time.monotonic()
        get_ms.append(ms(now - sent))
        if seen is not None and seen >= value:
            return ms(now - start)
        if now > deadline:
            return None
        time.sleep(poll_s)


def applied_more(api: AdminClient, before: int) -> Callable[[], dict[str, Any] | None]:
    """A condition: the link status from us-east-1, once it has applied more than ``before`` changes."""
    def condition() -> dict[str, Any] | None:
        status = link(api, SOURCE)
        return status if int(status["applied"]) > before else None
    return condition


def lag_at_rest(fleet: LocalFleet, samples: int, quiet_samples: int, poll_s: float, timeout: float
                ) -> dict[str, Any]:
    clients = {r: AdminClient(fleet.data, r) for r in REGIONS}
    try:
        clients[SOURCE].call("POST", f"/things/{PROBE}", json={"attributes": {"n": "0"}})
        for target in TARGETS:
            wait_for(shows(clients[target], PROBE, 0), timeout, f"{PROBE} in {target}", interval=0.02)
        write_ms: list[float] = []
        lags: dict[str, list[float]] = {t: [] for t in TARGETS}
        status_lags: dict[str, list[float]] = {t: [] for t in TARGETS}
        get_ms: dict[str, list[float]] = {t: [] for t in TARGETS}
        missed = dict.fromkeys(TARGETS, 0)
        with ThreadPoolExecutor(len(TARGETS)) as pool:
            for n in range(1, samples + 1):
                time.sleep(random.uniform(0.01, 0.03))
                start = time.monotonic()
                clients[SOURCE].call("PATCH", f"/things/{PROBE}", json={"attributes": {"n": str(n)}})
                write_ms.append(ms(time.monotonic() - start))
                futures = {t: pool.submit(poll_until, clients[t], PROBE, n, start, poll_s, timeout, get_ms[t])
                           for t in TARGETS}
                for target, future in futures.items():
                    lag = future.result()
                    if lag is None:
                        missed[target] += 1
                    else:
                        lags[target].append(lag)
                for target in TARGETS:
                    status_lag = link(clients[target], SOURCE)["lagMs"]
                    if status_lag is not None:
                        status_lags[target].append(float(status_lag))
                if n % 50 == 0:
                    log(f"  {n}/{samples}: p50 " + ", ".join(
                        f"{t} {summary(lags[t])['p50']} ms" for t in TARGETS))
        # Unobserved: no GETs while the change travels; read the target's own figure once it is applied.
        quiet: dict[str, list[float]] = {t: [] for t in TARGETS}
        applied = {t: int(link(clients[t], SOURCE)["applied"]) for t in TARGETS}
        for n in range(samples + 1, samples + quiet_samples + 1):
            time.sleep(random.uniform(0.01, 0.03))
            clients[SOURCE].call("PATCH", f"/things/{PROBE}", json={"attributes": {"n": str(n)}})
            time.sleep(0.05)
            for target in TARGETS:
                now = wait_for(applied_more(clients[target], applied[target]), timeout, f"sample {n} in {target}",
                               interval=0.02)
                applied[target] = int(now["applied"])
                if now["lagMs"] is not None:
                    quiet[target].append(float(now["lagMs"]))
        return {
            "samples": samples,
            "write_ms": summary(write_ms),
            "lag_ms": {t: summary(lags[t]) for t in TARGETS},
            "status_lag_ms": {t: summary(status_lags[t]) for t in TARGETS},
            "get_ms": {t: summary(get_ms[t]) for t in TARGETS},
            "not_visible_within_timeout": missed,
            "unobserved_samples": quiet_samples,
            "unobserved_status_lag_ms": {t: summary(quiet[t]) for t in TARGETS},
        }
    finally:
        for api in clients.values():
            api.close()


# -- 2. lag under load -----------------------------------------------------------------------


def _load_writer(config: dict[str, Any], results: Queue[Any]) -> None:
    """The writer process (multiprocessing, spawned): its own interpreter and CPU."""
    try:
        results.put(asyncio.run(_write_load(config)))
    except BaseException as error:  # report whatever it was to the parent, which waits for an answer
        results.put({"error": f"{type(error).__name__}: {error}"})


async def _write_load(config: dict[str, Any]) -> dict[str, Any]:
    rate, seconds, connections = float(config["rate"]), float(config["seconds"]), int(config["connections"])
    probe_every = int(config["probe_every"])
    tls = ssl.create_default_context(cafile=config["root_ca"])
    latencies: list[float] = []
    behind: list[float] = []
    probes: list[tuple[int, float, float]] = []
    errors: dict[str, int] = {}
    indexes = itertools.count()
    pool = [common.Http1(config["url"], tls, config["token"]) for _ in range(connections)]
    try:
        # open every connection (TLS handshakes) before the clock starts
        await asyncio.gather(*(http.request("GET", "/health") for http in pool))
        cpu_before = common.self_cpu_seconds()
        start = time.monotonic() + 0.05
        end = start + seconds
        last_done = start

        async def worker(http: common.Http1) -> None:
            nonlocal last_done
            while True:
                i = next(indexes)
                due = start + i / rate
                if due >= end:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif time.monotonic() >= end:
                    return  # behind schedule and out of time
                thing = LOAD_PROBE if i % probe_every == 0 else f"load-{i % LOAD_THINGS:03d}"
                body = json.dumps({"attributes": {"n": str(i)}}).encode()
                begun = time.monotonic()
                behind.append(ms(begun - due))
                try:
                    status = await asyncio.wait_for(http.request("PATCH", f"/things/{thing}", body), 10.0)
                    problem = None if status == 200 else f"HTTP {status}"
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        TimeoutError) as error:
                    http.close()
                    problem = type(error).__name__
                done = time.monotonic()
                if problem is not None:
                    errors[problem] = errors.get(problem, 0) + 1
                    continue
                latencies.append(ms(done - begun))
                last_done = max(last_done, done)
                if thing == LOAD_PROBE:
                    probes.append((i, begun, done))

        await asyncio.gather(*(worker(http) for http in pool))
        cpu_after = common.self_cpu_seconds()
    finally:
        for http in pool:
            http.close()
    return {"start": start, "last_done": last_done, "latencies_ms": latencies, "behind_ms": behind,
            "probes": probes, "errors": errors,
            "cpu_s": cpu_after - cpu_before}


def run_writer(fleet: LocalFleet, rate: float, seconds: float, connections: int, probe_every: int,
               timeout: float) -> dict[str, Any]:
    """Run the load writer in a process of its own and return what it measured."""
    context = multiprocessing.get_context("spawn")
    results: Queue[Any] = context.Queue()
    config = {"url": str(fleet.region(SOURCE)["http_url"]), "root_ca": str(fleet.data.root_ca),
              "token": fleet.data.token(), "rate": rate, "seconds": seconds, "connections": connections,
              "probe_every": probe_every}
    writer = context.Process(target=_load_writer, args=(config, results), name="load-writer", daemon=True)
    writer.start()
    try:
        outcome: dict[str, Any] = results.get(timeout=seconds + timeout + 30)
    finally:
        writer.join(10)
        if writer.is_alive():
            writer.terminate()
            writer.join(5)
    if "error" in outcome:
        raise RuntimeError(f"the load writer failed: {outcome['error']}")
    return outcome


def writer_summary(outcome: dict[str, Any], rate: float, seconds: float, connections: int) -> dict[str, Any]:
    start, last_done = float(outcome["start"]), float(outcome["last_done"])
    ok = len(outcome["latencies_ms"])
    elapsed = last_done - start
    return {
        "target_rate": rate,
        "seconds": seconds,
        "connections": connections,
        "writes_ok": ok,
        "write_errors": outcome["errors"],
        "achieved_rate": round(ok / elapsed, 1) if elapsed > 0 else None,
        "write_ms": summary(outcome["latencies_ms"]),
        "behind_schedule_ms": summary(outcome["behind_ms"]),
        "writer_cpu_percent": round(100 * outcome["cpu_s"] / elapsed, 1) if elapsed > 0 else None,
    }


class Sampler(threading.Thread):
    """Every ``interval``: the replication status of the targets, us-east-1's log head and the CPU
    time of every region process."""

    def __init__(self, fleet: LocalFleet, interval: float) -> None:
        super().__init__(name="status-sampler", daemon=True)
        self.fleet, self.interval = fleet, interval
        self.stop = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.pids = {r: common.region_int(fleet, r, "pid") for r in REGIONS}

    def run(self) -> None:
        clients = {r: AdminClient(self.fleet.data, r) for r in REGIONS}
        try:
            while not self.stop.is_set():
                sample: dict[str, Any] = {"t": time.monotonic(),
                                          "cpu": {r: common.process_cpu_seconds(p) for r, p in self.pids.items()}}
                try:
                    sample["head"] = clients[SOURCE].call("GET", "/replication/status")["head"]
                    for target in TARGETS:
                        sample[target] = link(clients[target], SOURCE)
                    sample["seen"] = time.monotonic()
                    self.samples.append(sample)
                except GeofleetError as error:
                    self.errors.append(error.message)
                self.stop.wait(self.interval)
        finally:
            for api in clients.values():
                api.close()

    def caught_up(self, head: int, since: float) -> float | None:
        """When a sample begun after ``since`` first saw both targets' cursors at ``head``: the time
        its answers were in (an upper bound, within one status round trip)."""
        for sample in list(self.samples):
            if sample["t"] >= since and all(sample[t]["cursor"] >= head for t in TARGETS):
                return float(sample["seen"])
        return None

    def cpu_seconds(self, start: float, end: float) -> tuple[float, dict[str, float | None]]:
        """(elapsed, CPU seconds of each region) between the first and last samples in [start, end]."""
        window = [s for s in self.samples if start <= s["t"] <= end]
        if len(window) < 2:
            return 0.0, dict.fromkeys(REGIONS, None)
        first, last = window[0], window[-1]
        return last["t"] - first["t"], {r: last["cpu"][r] - first["cpu"][r]
                                        if last["cpu"][r] is not None and first["cpu"][r] is not None else None
                                        for r in REGIONS}

    def cpu_percent(self, start: float, end: float) -> dict[str, float | None]:
        elapsed, used = self.cpu_seconds(start, end)
        return {r: round(100 * u / elapsed, 1) if u is not None and elapsed > 0 else None for r, u in used.items()}


class ProbeWatcher(threading.Thread):
    """Polls the load probe's value in one region; records (time, value) whenever it changes."""

    def __init__(self, fleet: LocalFleet, region: str, poll_s: float) -> None:
        super().__init__(name="probe-watcher", daemon=True)
        self.fleet, self.region, self.poll_s = fleet, region, poll_s
        self.stop = threading.Event()
        self.seen: list[tuple[float, int]] = []
        self.polls = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with AdminClient(self.fleet.data, self.region) as api:
            last: int | None = None
            while not self.stop.is_set():
                try:
                    value = attribute(api, LOAD_PROBE, "n")
                except GeofleetError as error:
                    self.errors.append(error.message)
                    value = None
                now = time.monotonic()
                self.polls += 1
                if value is not None and value != last:
                    self.seen.append((now, value))
                    last = value
                self.stop.wait(self.poll_s)

    def lag_ms(self, seq: int, since: float) -> float | None:
        """ms from ``since`` to the first poll that showed ``seq`` or a later write (0 if before)."""
        for when, value in self.seen:
            if value >= seq:
                return ms(max(0.0, when - since))
        return None


def source_cpu_ms_per_write(sampler: Sampler, start: float, end: float, writes: int) -> float | None:
    elapsed, used = sampler.cpu_seconds(start, end)
    source = used[SOURCE]
    # the window of CPU samples is a little shorter than the writer's: scale the writes to it
    if source is None or writes == 0 or elapsed <= 0 or end <= start:
        return None
    return round(1000 * source / (writes * elapsed / (end - start)), 2)


def create_load_things(fleet: LocalFleet, timeout: float) -> None:
    with AdminClient(fleet.data, SOURCE) as api:
        for name in [LOAD_PROBE, *(f"load-{i:03d}" for i in range(LOAD_THINGS))]:
            api.call("POST", f"/things/{name}", json={"attributes": {"n": "-1"}})
    for target in TARGETS:
        with AdminClient(fleet.data, target) as api:
            wait_for(shows(api, f"load-{LOAD_THINGS - 1:03d}", -1), timeout, f"the load things in {target}",
                     interval=0.02)


def load_without_replication(fleet: LocalFleet, rate: float, seconds: float, connections: int,
                             timeout: float) -> dict[str, Any]:
    """The same writer while both targets pause their links from us-east-1 (nobody pulls its log):
    what replication costs the source; then resume, and how fast the targets catch up."""
    clients = {t: AdminClient(fleet.data, t) for t in TARGETS}
    sampler = Sampler(fleet, 0.05)
    try:
        for api in clients.values():
            api.call("POST", f"/replication/pause?peer={SOURCE}")
        sampler.start()
        outcome = run_writer(fleet, rate, seconds, connections, 10**9, timeout)
        with AdminClient(fleet.data, SOURCE) as api:
            head = int(api.call("GET", "/replication/status")["head"])
        cursors = {t: int(link(api, SOURCE)["cursor"]) for t, api in clients.items()}
        resumed = time.monotonic()
        for api in clients.values():
            api.call("POST", f"/replication/resume?peer={SOURCE}")
        deadline = resumed + timeout
        while sampler.caught_up(head, resumed) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sampler.stop.set()
        sampler.join(5)
        for api in clients.values():
            api.close()
    start, last_done = float(outcome["start"]), float(outcome["last_done"])
    caught_up = sampler.caught_up(head, resumed)
    catch_up_s = None if caught_up is None else caught_up - resumed
    backlog = {t: head - c for t, c in cursors.items()}
    return {
        **writer_summary(outcome, rate, seconds, connections),
        "region_cpu_percent": sampler.cpu_percent(start, last_done),
        "source_cpu_ms_per_write": source_cpu_ms_per_write(sampler, start, last_done, len(outcome["latencies_ms"])),
        "backlog_at_resume": backlog,
        "catch_up_s": None if catch_up_s is None else round(catch_up_s, 3),
        "catch_up_changes_per_s": None if not catch_up_s else round(min(backlog.values()) / catch_up_s, 1),
    }


def lag_under_load(fleet: LocalFleet, rate: float, seconds: float, connections: int, probe_every: int,
                   poll_s: float, timeout: float) -> dict[str, Any]:
    sampler = Sampler(fleet, STATUS_INTERVAL_S)
    watcher = ProbeWatcher(fleet, TARGETS[0], poll_s)
    sampler.start()
    watcher.start()
    try:
        outcome = run_writer(fleet, rate, seconds, connections, probe_every, timeout)
        with AdminClient(fleet.data, SOURCE) as api:
            head = int(api.call("GET", "/replication/status")["head"])
        start, last_done = float(outcome["start"]), float(outcome["last_done"])
        probes: list[tuple[int, float, float]] = [(int(i), float(b), float(d)) for i, b, d in outcome["probes"]]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sampler.caught_up(head, last_done) is not None and (
                    not probes or watcher.lag_ms(probes[-1][0], 0.0) is not None):
                break
            time.sleep(0.05)
    finally:
        sampler.stop.set()
        watcher.stop.set()
        sampler.join(5)
        watcher.join(5)
    caught_up = sampler.caught_up(head, last_done)
    from_send = [watcher.lag_ms(seq, sent) for seq, sent, _ in probes]
    from_ack = [watcher.lag_ms(seq, acked) for seq, _, acked in probes]
    writing = [s for s in sampler.samples if start <= s["t"] <= last_done]
    until_caught_up = [s for s in sampler.samples if start <= s["t"] <= (caught_up or float("inf"))]
    return {
        **writer_summary(outcome, rate, seconds, connections),
        "end_to_end_lag_ms": {TARGETS[0]: {**summary([v for v in from_send if v is not None]),
                                           "probes": len(probes), "never_seen": sum(v is None for v in from_send),
                                           "polls": watcher.polls}},
        "visible_after_ack_ms": {TARGETS[0]: summary([v for v in from_ack if v is not None])},
        "status_lag_ms": {t: summary([float(s[t]["lagMs"]) for s in writing if s[t]["lagMs"] is not None])
                          for t in TARGETS},
        "max_backlog": {t: max((int(s[t]["backlog"]) for s in until_caught_up), default=None) for t in TARGETS},
        "source_head": head,
        "catch_up_s": round(caught_up - last_done, 3) if caught_up is not None else None,
        "region_cpu_percent": sampler.cpu_percent(start, last_done),
        "source_cpu_ms_per_write": source_cpu_ms_per_write(sampler, start, last_done, len(outcome["latencies_ms"])),
        "status_samples": len(writing),
        "poll_errors": sampler.errors[:5] + watcher.errors[:5],
    }


# -- 3. revocation ---------------------------------------------------------------------------


class Attempt:
    """One MQTT connection with a device's certificate: accepted, refused, or closed unanswered.

    The paho network loop runs in a thread of our own (``client.loop``): paho's ``loop_start``
    thread reconnects by itself and, once it waits to reconnect, takes up to a second to stop."""

    def __init__(self, name: str, port: int, certs: Path) -> None:
        self.port = port
        self.answered = threading.Event()
        self.closed = threading.Event()
        self.outcome: str | None = None
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        self.closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = common.device_client(name, certs)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def run(self, timeout: float) -> str:
        """Connect and wait for the answer: 'accepted', 'refused' or 'no answer'."""
        try:
            self.client.connect(common.HOST, self.port, keepalive=60)
        except (OSError, ssl.SSLError) as error:
            self.outcome = f"error: {type(error).__name__}"
            return self.outcome
        self._thread = threading.Thread(target=self._loop, name=f"mqtt-{self.port}", daemon=True)
        self._thread.start()
        self.answered.wait(timeout)
        return self.outcome or "no answer"

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return  # closed (by either side): no reconnecting

    def close(self) -> None:
        self.closing = True
        self.client.disconnect()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.outcome = "refused" if reason.is_failure else "accepted"
        self.answered.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.close_reason = str(reason)
        if self.outcome is None:
            self.outcome = "refused"  # closed before any CONNACK
        self.answered.set()
        if not self.closing:
            self.closed.set()


def watch_revocation(name: str, port: int, certs: Path, session: Attempt, start: float, timeout: float
                     ) -> dict[str, Any]:
    """In one region: when the session was cut, and when a new CONNECT was first refused."""
    result: dict[str, Any] = {"disconnected_ms": None, "refused_ms": None, "accepted_probes": 0, "probes": 0}
    if session.closed.wait(max(0.0, start + timeout - time.monotonic())) and session.closed_at is not None:
        result["disconnected_ms"] = ms(session.closed_at - start)
        result["close_reason"] = session.close_reason
    session.close()
    while time.monotonic() < start + timeout:
        probe = Attempt(name, port, certs)
        outcome = probe.run(5.0)
        now = time.monotonic()
        probe.close()
        result["probes"] += 1
        if outcome == "refused":
            result["refused_ms"] = ms(now - start)
            break
        if outcome == "accepted":
            result["accepted_probes"] += 1
        time.sleep(0.005)
    return result


def connect_when_admitted(name: str, port: int, certs: Path, timeout: float) -> Attempt:
    """A session of the device in a region, once the region has its identity (replicated)."""
    deadline = time.monotonic() + timeout
    while True:
        session = Attempt(name, port, certs)
        outcome = session.run(5.0)
        if outcome == "accepted":
            return session
        session.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not admitted on port {port} within {timeout:g} s: {outcome}")
        time.sleep(0.02)


def revocation(fleet: LocalFleet, count: int, timeout: float) -> dict[str, Any]:
    certs = common.devices_dir(fleet)
    names = [f"revoke-{i:02d}" for i in range(count)]
    log(f"  creating {count} devices in {SOURCE}")
    devices = common.create_devices(fleet, names, SOURCE)
    ports = {t: common.region_int(fleet, t, "mqtt_port") for t in TARGETS}
    runs: list[dict[str, Any]] = []
    with AdminClient(fleet.data, SOURCE) as api, ThreadPoolExecutor(len(TARGETS)) as pool:
        for name, cert_id in devices.items():
            sessions: dict[str, Attempt] = {}
            try:
                for target in TARGETS:
                    sessions[target] = connect_when_admitted(name, ports[target], certs, timeout)
                start = time.monotonic()
                api.call("POST", f"/certificates/{cert_id}/revoke")
                revoke_ms = ms(time.monotonic() - start)
                futures = {t: pool.submit(watch_revocation, name, ports[t], certs, sessions[t], start, timeout)
                           for t in TARGETS}
                runs.append({"device": name, "revoke_ms": revoke_ms, **{t: f.result() for t, f in futures.items()}})
            finally:
                for session in sessions.values():
                    session.close()
            log(f"  {name}: " + ", ".join(
                f"{t} cut {_fmt(runs[-1][t]['disconnected_ms'])} ms, refused {_fmt(runs[-1][t]['refused_ms'])} ms"
                for t in TARGETS))
    result: dict[str, Any] = {"devices": count, "revoke_request_ms": summary([r["revoke_ms"] for r in runs])}
    for target in TARGETS:
        mine = [r[target] for r in runs]
        result[target] = {
            "disconnected_ms": summary([m["disconnected_ms"] for m in mine if m["disconnected_ms"] is not None]),
            "refused_ms": summary([m["refused_ms"] for m in mine if m["refused_ms"] is not None]),
            "sessions_not_cut": sum(m["disconnected_ms"] is None for m in mine),
            "never_refused": sum(m["refused_ms"] is None for m in mine),
            "accepted_after_cut": sum(m["accepted_probes"] for m in mine),
            "close_reasons": sorted({str(m.get("close_reason")) for m in mine}),
        }
    both = [max(r[t]["disconnected_ms"] for t in TARGETS) for r in runs
            if all(r[t]["disconnected_ms"] is not None for t in TARGETS)]
    result["all_sessions_cut_ms"] = summary(both)
    refused = [max(r[t]["refused_ms"] for t in TARGETS) for r in runs
               if all(r[t]["refused_ms"] is not None for t in TARGETS)]
    result["refused_everywhere_ms"] = summary(refused)
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# -- 4. convergence after a partition --------------------------------------------------------


def partition_writer(fleet: LocalFleet, region: str, rate: float, seconds: float, counts: dict[str, int],
                     errors: list[str]) -> None:
    """``rate`` changes/s in one region for ``seconds``: new things, shared attributes, shadows."""
    key = region.replace("-", "_")
    choose = random.Random(region)
    with AdminClient(fleet.data, region) as api:
        start = time.monotonic()
        for i in itertools.count():
            due = start + i / rate
            if due >= start + seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            shared = f"shared-{choose.randrange(SHARED_THINGS):02d}"
            draw = choose.random()
            kind = "create" if draw < 0.2 else "attribute" if draw < 0.8 else "shadow"
            try:
                if kind == "create":
                    api.call("POST", f"/things/part-{region}-{i:05d}", json={"attributes": {"origin": region}})
                elif kind == "attribute":
                    api.call("PATCH", f"/things/{shared}", json={"attributes": {"last": f"{region}:{i}", key: str(i)}})
                else:
                    state = {"state": {"reported": {key: i, "last": f"{region}:{i}"}}}
                    api.call("POST", f"/things/{shared}/shadow", content=json.dumps(state).encode())
                counts[kind] = counts.get(kind, 0) + 1
            except GeofleetError as error:
                errors.append(f"{kind}: {error.message}")


def listing(api: AdminClient) -> dict[str, Any]:
    """Every thing of a region without the region-specific ARN."""
    things = api.call("GET", "/things")["things"]
    return {t["thingName"]: {k: v for k, v in t.items() if k != "thingArn"} for t in things}


def shadow_state(api: AdminClient, thing: str) -> Any:
    try:
        return api.call("GET", f"/things/{thing}/shadow").get("state")
    except GeofleetError as error:
        if error.status == 404:
            return None
        raise


def things_identical(clients: dict[str, AdminClient]) -> bool:
    views = [{name: body.get("attributes") for name, body in listing(api).items()} for api in clients.values()]
    return all(view == views[0] for view in views)


def partition(fleet: LocalFleet, seconds: float, rate: float, timeout: float) -> dict[str, Any]:
    clients = {r: AdminClient(fleet.data, r) for r in REGIONS}
    try:
        for i in range(SHARED_THINGS):
            clients[SOURCE].call("POST", f"/things/shared-{i:02d}", json={"attributes": {"last": "none"}})
        last = f"shared-{SHARED_THINGS - 1:02d}"
        wait_for(lambda: all(exists(clients[r], last) for r in REGIONS), timeout, "the shared things everywhere",
                 interval=0.02)
        clients[ISOLATED].call("POST", "/replication/pause")
        for region in REGIONS:
            if region != ISOLATED:
                clients[region].call("POST", f"/replication/pause?peer={ISOLATED}")
        log(f"  partitioned {ISOLATED}; writing {rate:g}/s in each region for {seconds:g} s")
        counts: dict[str, dict[str, int]] = {r: {} for r in REGIONS}
        errors: dict[str, list[str]] = {r: [] for r in REGIONS}
        writers = [threading.Thread(target=partition_writer, args=(fleet, r, rate, seconds, counts[r], errors[r]),
                                    name=f"writer-{r}", daemon=True) for r in REGIONS]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(seconds + timeout)
        if any(w.is_alive() for w in writers):
            raise RuntimeError("a partition writer did not finish in time")
        before = {r: {"things": len(listing(api)), "head": api.call("GET", "/replication/status")["head"]}
                  for r, api in clients.items()}
        log(f"  before resume: {json.dumps(before)}")
        start = time.monotonic()
        for api in clients.values():
            api.call("POST", "/replication/resume")
        caught_up: float | None = None
        identical: float | None = None
        deadline = start + timeout
        last_compare = 0.0
        while time.monotonic() < deadline and (identical is None or caught_up is None):
            reports = {r: api.call("GET", "/replication/status") for r, api in clients.items()}
            now = time.monotonic()
            if caught_up is None and all(reports[r]["links"][p]["cursor"] >= reports[p]["head"]
                                         for r in REGIONS for p in REGIONS if p != r):
                caught_up = now - start
            if identical is None and (caught_up is not None or now - last_compare >= 0.5):
                last_compare = now
                if things_identical(clients):
                    identical = time.monotonic() - start
            time.sleep(0.05)
        log(f"  caught up after {caught_up} s, things identical after {identical} s")
        rounds: list[dict[str, Any]] = []
        sync_ms: list[float] = []
        clean: float | None = None
        while time.monotonic() < deadline:
            found: dict[str, Any] = {}
            for region, api in clients.items():
                began = time.monotonic()
                peers = api.call("POST", "/replication/sync")["peers"]
                sync_ms.append(ms(time.monotonic() - began))
                found[region] = {p: r.get("differingBuckets", r) for p, r in peers.items()}
            rounds.append(found)
            if all(v == 0 for peers in found.values() for v in peers.values()):
                clean = time.monotonic() - start
                break
            time.sleep(0.2)
        views = [listing(api) for api in clients.values()]
        shadows = [[shadow_state(api, f"shared-{i:02d}") for i in range(SHARED_THINGS)] for api in clients.values()]
        status = {r: {p: {k: v[k] for k in ("lagMs", "backlog", "lastError", "digestsAgree", "paused")}
                      for p, v in api.call("GET", "/replication/status")["links"].items()}
                  for r, api in clients.items()}
        return {
            "seconds": seconds,
            "rate_per_region": rate,
            "writes": counts,
            "write_errors": {r: {"count": len(e), "first": e[:3]} for r, e in errors.items()},
            "before_resume": before,
            "caught_up_s": None if caught_up is None else round(caught_up, 3),
            "things_identical_s": None if identical is None else round(identical, 3),
            "sync_clean_s": None if clean is None else round(clean, 3),
            "sync_rounds": len(rounds),
            "first_sync_round_differing_buckets": rounds[0] if rounds else None,
            "sync_call_ms": summary(sync_ms),
            "final": {
                "things": len(views[0]),
                "things_identical": all(v == views[0] for v in views),
                "shared_shadows_identical": all(s == shadows[0] for s in shadows),
                "links": status,
            },
        }
    finally:
        for api in clients.values():
            api.close()


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--samples", type=common.positive(int), default=200,
                        help="writes measured at rest (default 200)")
    parser.add_argument("--quiet-samples", type=common.not_negative(int), default=100,
                        help="writes at rest measured only by the targets' own lagMs, without polling (default 100)")
    parser.add_argument("--poll-ms", type=common.not_negative(float), default=2.0,
                        help="interval between GETs of a target at rest (default 2)")
    parser.add_argument("--rate", type=common.positive(float), default=1000.0,
                        help="target writes/s under load (default 1000)")
    parser.add_argument("--seconds", type=common.positive(float), default=10.0,
                        help="duration of the load (default 10)")
    parser.add_argument("--connections", type=common.positive(int), default=16,
                        help="the load writer's connections (requests in flight at most; default 16)")
    parser.add_argument("--probe-every", type=common.positive(int), default=50,
                        help="every Nth write under load is an end-to-end probe (default 50)")
    parser.add_argument("--load-poll-ms", type=common.not_negative(float), default=5.0,
                        help="interval between GETs of the probe under load (default 5)")
    parser.add_argument("--baseline-seconds", type=common.not_negative(float), default=5.0,
                        help="then the same load without replication from us-east-1 (paused); 0 skips (default 5)")
    parser.add_argument("--revocations", type=common.positive(int), default=10, help="devices revoked (default 10)")
    parser.add_argument("--partition-seconds", type=common.positive(float), default=60.0,
                        help="how long the partition lasts (default 60)")
    parser.add_argument("--partition-rate", type=common.positive(float), default=50.0,
                        help="changes/s written in each region during the partition (default 50)")
    parser.add_argument("--timeout", type=common.positive(float), default=30.0,
                        help="the longest any one wait may take, in seconds (default 30)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="phases to run (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, result = common.begin("replication", {
        "regions": list(REGIONS), "source": SOURCE, "isolated": ISOLATED, "samples": args.samples,
        "quiet_samples": args.quiet_samples, "poll_ms": args.poll_ms, "baseline_seconds": args.baseline_seconds,
        "rate": args.rate, "seconds": args.seconds, "connections": args.connections,
        "probe_every": args.probe_every, "load_poll_ms": args.load_poll_ms, "revocations": args.revocations,
        "partition_seconds": args.partition_seconds, "partition_rate": args.partition_rate,
        "timeout": args.timeout, "phases": args.phases}, (*common.PACKAGES, "httpx"))
    with common.throwaway_fleet(REGIONS, log) as fleet:
        try:
            result["setup_seconds"] = round(time.monotonic() - began, 1)
            if "at_rest" in args.phases:
                log(f"lag at rest: {args.samples} writes in {SOURCE}")
                result["at_rest"] = lag_at_rest(fleet, args.samples, args.quiet_samples, args.poll_ms / 1000,
                                                args.timeout)
                log(f"  {json.dumps(result['at_rest']['lag_ms'])}")
            if "under_load" in args.phases:
                log(f"lag under load: {args.rate:g} writes/s in {SOURCE} for {args.seconds:g} s")
                create_load_things(fleet, args.timeout)
                result["under_load"] = lag_under_load(fleet, args.rate, args.seconds, args.connections,
                                                      args.probe_every, args.load_poll_ms / 1000, args.timeout)
                load = result["under_load"]
                log(f"  {load['achieved_rate']} writes/s; end to end {json.dumps(load['end_to_end_lag_ms'])}; "
                    f"caught up {load['catch_up_s']} s after the last write; CPU {load['region_cpu_percent']}")
                if args.baseline_seconds > 0:
                    log(f"the same load for {args.baseline_seconds:g} s with {', '.join(TARGETS)} not pulling "
                        f"from {SOURCE}")
                    result["load_without_replication"] = load_without_replication(
                        fleet, args.rate, args.baseline_seconds, args.connections, args.timeout)
                    base = result["load_without_replication"]
                    log(f"  {base['achieved_rate']} writes/s; CPU {base['region_cpu_percent']}; "
                        f"caught up {base['catch_up_s']} s after resuming")
            if "revocation" in args.phases:
                log(f"revocation: {args.revocations} devices")
                result["revocation"] = revocation(fleet, args.revocations, args.timeout)
            if "partition" in args.phases:
                log(f"partition: {ISOLATED} cut off for {args.partition_seconds:g} s")
                result["partition"] = partition(fleet, args.partition_seconds, args.partition_rate, args.timeout)
                log(f"  {json.dumps({k: v for k, v in result['partition'].items() if k.endswith('_s')})}")
        finally:
            log("stopping the fleet")
            result["fleet_exit_code"] = fleet.stop()
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
