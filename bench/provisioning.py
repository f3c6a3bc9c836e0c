#!/usr/bin/env python3
"""Device provisioning (``POST /v1/provision``) end to end: devices/s, latency and where the server spends it.

What is measured: how many devices a three-region fleet provisions per second when
``--concurrency`` clients provision ``--devices`` devices as fast as answers come back (closed
loop), the latency of each request, the answers by status, the home region the fleet chose for
devices on each continent, the time each server-side step took (the ``Server-Timing`` header of
the answer: ``auth``, ``geo``, ``guard``, ``sign``, ``registry``) and the CPU use of every
region process during the run.

How: the script starts a throw-away fleet (``geofleet.cluster.LocalFleet``: ``geofleet up`` with
us-east-1, eu-west-1 and ap-southeast-1 on free loopback ports) whose fleet.json trusts
127.0.0.2/32 as a proxy (``trusted_proxies``). It creates the enrollment group ``bench`` in
us-east-1 with the admin API and waits until ``GET /enrollment-groups`` of every region lists
it (``group_replicated_s``). Before any timing, every device's EC P-256 key and CSR
(``geofleet.pki.ca.make_csr``, CN = device id) are made; just before the run each request is
signed with its device key (HMAC of the group key and the device id) and the current Unix time,
so every signature is unique and within the service's 300 s clock-skew bound.

Request i (device ``bench-NNNNN``) goes to region i mod 3 and carries ``X-Forwarded-For: <ip>``
with ip = ``FORWARDED_FOR[(i // 3) mod 6]`` (public addresses in GB, US, JP, BR, ZA and AU;
every address reaches every region), so the geolocation and region choice are exercised. (With
``--fleet-regions 1`` the fleet is us-east-1 alone, which then gets every request: what one
region does without guard calls to peers and without replication; with ``--pause-replication``
every region stops pulling its peers' changes for the timed run, which shows what replication
costs while the guard calls still go to the owner regions.) Requests are sent from 127.0.0.2,
which the fleet trusts, so it believes that header. Each of the ``--concurrency`` clients holds
one HTTP/1.1 keep-alive TLS connection (verified against the fleet root) to each region, opened
before the clock starts (again after the warm-up), and has at most one request in flight; the
clients speak HTTP/1.1 themselves (``common.Http1``, all in one asyncio loop) since httpx would
cost more client CPU than a region spends on a request, on the same two cores. ``--warmup``
requests (other device ids, same mix) go first and are not counted: the first geolocation in a
region process loads its data. No new request starts after ``--max-seconds``.

Latency: from just before a request is written to its whole answer having been read (if the
region had closed an idle kept-alive connection, the request is sent again on a new one and the
latency includes that; ``stale_connection_retries`` counts those).
``devices_per_s`` = 201 answers / wall time (the first request to the last answer).
``server_timing_ms`` gives each step's distribution; ``steps_total`` is their sum per request and
``outside_steps`` the rest of the latency (HTTP, JSON and pydantic, waiting for the event loop,
the client). ``guard_by_owner`` splits the guard step by whether the device id's owner region
(where the provision-once guard lives) was the region asked (``local``: SQLite) or another one
(``peer``: two HTTPS round trips over the peer channel, claim and complete). ``cpu_percent`` is
from /proc (100 = one core busy for the whole run) and ``region_cpu_ms_per_device`` the CPU
time of all region processes together per 201 answer. ``connections_closed`` counts the TCP
connections closed during the run on the regions' peer ports (the peer channel: guard calls and
replication pulls) and on their public API ports (from the growth of the TIME_WAIT sockets in
/proc/net/tcp): with keep-alive working, both stay near 0.

Prints one JSON object on stdout; progress goes to stderr. Everything stays on 127.0.0.1 (and
127.0.0.2, as the clients' source address) and the fleet is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.domain import enrollment
from geofleet.domain.placement import owner
from geofleet.pki.ca import make_csr, new_key
from geofleet.provisioning.geolocate import Geolocator

log = common.logger("provisioning")

PROXY = "127.0.0.2"
"""The clients' source address, which the fleet trusts as a proxy (its X-Forwarded-For counts)."""

GROUP = "bench"
"""The enrollment group every device provisions with."""

FORWARDED_FOR = ("81.2.69.142", "8.8.8.8", "133.11.0.1", "200.160.2.3", "41.0.0.1", "1.1.1.1")
"""Public addresses on several continents (GB, US, JP, BR, ZA, AU) the requests claim to come from."""

STEPS = ("auth", "geo", "guard", "sign", "registry")
"""The server-side steps of a provisioning, as named in its Server-Timing header."""

TARGET_DEVICES_PER_S = 300.0
TARGET_P99_MS = 100.0


@dataclass(frozen=True, slots=True)
class Device:
    """A device's pre-made request material (the body is signed just before the run)."""

    index: int
    device_id: str
    csr: str
    region: str
    forwarded_for: str


@dataclass(slots=True)
class Outcome:
    """What became of one request."""

    device: Device
    status: int | None = None
    latency_ms: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    home_region: str | None = None
    problem: str | None = None
    retried: bool = False


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``"auth;dur=1.23, geo;dur=0.10"`` -> ``{"auth": 1.23, "geo": 0.1}`` (milliseconds); entries
    without a parsable ``dur`` are left out."""
    result: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    result[name] = float(value)
    return result


def make_devices(prefix: str, count: int, regions: tuple[str, ...]) -> list[Device]:
    """``count`` devices with fresh keys and CSRs, request i to ``regions[i % len]`` from
    ``FORWARDED_FOR[(i // len(regions)) % len]`` (so every address reaches every region)."""
    devices = []
    for i in range(count):
        device_id = f"{prefix}-{i:05d}"
        devices.append(Device(i, device_id, make_csr(new_key(), device_id).decode(), regions[i % len(regions)],
                              FORWARDED_FOR[(i // len(regions)) % len(FORWARDED_FOR)]))
    return devices


def signed_body(device: Device, group_key: bytes, timestamp: int) -> bytes:
    """The JSON body of ``device``'s provisioning request, signed with its device key."""
    signature = enrollment.sign(enrollment.device_key(group_key, device.device_id), device.device_id,
                                enrollment.csr_fingerprint(device.csr), timestamp)
    return json.dumps({"deviceId": device.device_id, "certificateSigningRequest": device.csr,
                       "enrollmentGroup": GROUP, "timestamp": timestamp, "signature": signature}).encode()


def create_group(fleet: LocalFleet, regions: tuple[str, ...], timeout: float) -> tuple[bytes, dict[str, float]]:
    """Create the enrollment group in the first region; wait until every region lists it.
    Returns the group key and, per region, seconds from the creation request until it was listed."""
    admins = {region: AdminClient(fleet.data, region) for region in regions}
    try:
        started = time.monotonic()
        key = enrollment.decode_key(str(admins[regions[0]].call("POST", f"/enrollment-groups/{GROUP}",
                                                                json={})["key"]))
        seen: dict[str, float] = {}
        deadline = started + timeout
        while len(seen) < len(regions):
            for region, admin in admins.items():
                if region not in seen and any(g.get("name") == GROUP for g in
                                              admin.call("GET", "/enrollment-groups")["enrollmentGroups"]):
                    seen[region] = round(time.monotonic() - started, 3)
            if len(seen) < len(regions):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"enrollment group {GROUP!r} not listed in "
                                       f"{sorted(set(regions) - set(seen))} after {timeout:g} s")
                time.sleep(0.02)
        return key, seen
    finally:
        for admin in admins.values():
            admin.close()


def replication(fleet: LocalFleet, regions: tuple[str, ...], action: str) -> None:
    """``POST /replication/<action>`` (pause or resume, every peer) in every region."""
    for region in regions:
        with AdminClient(fleet.data, region) as admin:
            admin.call("POST", f"/replication/{action}")


class Load:
    """The clients: ``concurrency`` of them, each with a keep-alive connection to every region."""

    def __init__(self, fleet: LocalFleet, regions: tuple[str, ...], concurrency: int, timeout: float) -> None:
        config = fleet.data.config()
        tls = ssl.create_default_context(cafile=str(fleet.data.root_ca))
        self.regions = regions
        self.timeout = timeout
        self.clients = [{region: common.Http1(config.region(region).http_url, tls, local_address=PROXY)
                         for region in regions} for _ in range(concurrency)]

    async def connect(self) -> None:
        await asyncio.gather(*(http.connect() for client in self.clients for http in client.values()))

    def close(self) -> None:
        for client in self.clients:
            for http in client.values():
                http.close()

    async def run(self, devices: list[Device], bodies: list[bytes], stop_at: float) -> list[Outcome]:
        """Send every request (each client one at a time), none started after ``stop_at``
        (monotonic); returns the outcomes of those sent."""
        outcomes: list[Outcome] = []
        queue = iter(range(len(devices)))

        async def client(connections: dict[str, common.Http1]) -> None:
            for i in queue:
                if time.monotonic() >= stop_at:
                    return
                device = devices[i]
                outcome = Outcome(device)
                outcomes.append(outcome)
                http = connections[device.region]
                begun = time.perf_counter()
                try:
                    answer = await asyncio.wait_for(self._send(http, outcome, bodies[i]), self.timeout)
                except (*common.HTTP1_ERRORS, TimeoutError) as error:
                    http.close()
                    outcome.problem = type(error).__name__
                    continue
                outcome.latency_ms = (time.perf_counter() - begun) * 1000
                outcome.status = answer.status
                outcome.timing = parse_server_timing(answer.headers.get("server-timing"))
                try:
                    content = json.loads(answer.body)
                except ValueError:
                    content = {}
                if answer.status == 201:
                    outcome.home_region = content.get("homeRegion")
                else:
                    message = content.get("message") if isinstance(content, dict) else None
                    outcome.problem = f"HTTP {answer.status}: {message or answer.body[:200]!r}"

        await asyncio.gather(*(client(connections) for connections in self.clients))
        return outcomes

    @staticmethod
    async def _send(http: common.Http1, outcome: Outcome, body: bytes) -> common.HttpAnswer:
        """POST the request; once more on a new connection if a kept-alive one turns out closed
        by the server (its idle timeout) before any answer: the server never saw the request."""
        headers = f"X-Forwarded-For: {outcome.device.forwarded_for}\r\n"
        reused = http.streams is not None
        try:
            return await http.exchange("POST", "/v1/provision", body, headers)
        except asyncio.IncompleteReadError as error:
            if not reused or error.partial:
                raise
        outcome.retried = True
        return await http.exchange("POST", "/v1/provision", body, headers)


def closed_connections(ports: set[int]) -> int | None:
    """TCP connections in TIME_WAIT with one end on one of ``ports`` (Linux /proc/net/tcp), or
    None where unavailable. Whichever end closes a connection holds it in TIME_WAIT for 60 s, so
    the growth of this count over a shorter run is how many connections were closed in it."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    count = 0
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "06" and (int(fields[1].rsplit(":", 1)[1], 16) in ports
                                                      or int(fields[2].rsplit(":", 1)[1], 16) in ports):
            count += 1
    return count


def cpu_seconds(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: common.process_cpu_seconds(pid) for name, pid in pids.items()}


def summarize(outcomes: list[Outcome], wall: float, not_sent: int, regions: tuple[str, ...],
              continents: dict[str, str]) -> dict[str, Any]:
    """The result of the timed run (see the module docstring for the fields)."""
    created = [o for o in outcomes if o.status == 201]
    answered = [o for o in outcomes if o.status is not None]
    statuses = Counter(str(o.status) if o.status is not None else "no answer" for o in outcomes)
    problems = Counter(o.problem.split(":", 1)[0] for o in outcomes if o.problem)
    samples = list(dict.fromkeys(o.problem for o in outcomes if o.problem))[:5]

    def dist(values: list[float]) -> dict[str, float | int | None]:
        return common.distribution(values, digits=2, quantiles=(50, 90, 99))

    timing: dict[str, Any] = {step: dist([o.timing[step] for o in answered if step in o.timing]) for step in STEPS}
    totals = [(o, sum(o.timing.values())) for o in answered if o.timing]
    timing["steps_total"] = dist([total for _, total in totals])
    timing["outside_steps"] = dist([o.latency_ms - total for o, total in totals if o.latency_ms is not None])
    local = [o.timing["guard"] for o in answered if "guard" in o.timing
             and owner(o.device.device_id, regions) == o.device.region]
    peer = [o.timing["guard"] for o in answered if "guard" in o.timing
            and owner(o.device.device_id, regions) != o.device.region]
    timing["guard_by_owner"] = {"local": common.distribution(local, digits=2, quantiles=(50, 99), count=True),
                                "peer": common.distribution(peer, digits=2, quantiles=(50, 99), count=True)}

    homes: dict[str, Counter[str]] = {}
    for o in created:
        homes.setdefault(continents.get(o.device.forwarded_for, "?"), Counter())[str(o.home_region)] += 1
    latencies = [o.latency_ms for o in answered if o.latency_ms is not None]
    return {
        "sent": len(outcomes),
        "not_sent": not_sent,
        "by_status": dict(sorted(statuses.items())),
        "problems": dict(problems),
        "problem_samples": samples,
        "stale_connection_retries": sum(o.retried for o in outcomes),
        "wall_seconds": round(wall, 3),
        "devices_per_s": round(len(created) / wall, 1) if wall > 0 else None,
        "latency_ms": dist(latencies),
        "latency_ms_by_region": {region: common.distribution(
            [o.latency_ms for o in answered if o.device.region == region and o.latency_ms is not None],
            digits=2, quantiles=(50, 99)) for region in regions},
        "server_timing_ms": timing,
        "home_region_by_continent": {continent: dict(sorted(counts.items()))
                                     for continent, counts in sorted(homes.items())},
    }


async def provision_all(fleet: LocalFleet, regions: tuple[str, ...], group_key: bytes, warmup: list[Device],
                        devices: list[Device], args: argparse.Namespace, continents: dict[str, str]
                        ) -> dict[str, Any]:
    load = Load(fleet, regions, args.concurrency, args.timeout)
    try:
        await load.connect()
        log(f"warm-up: {len(warmup)} requests")
        now = int(time.time())
        warm = await load.run(warmup, [signed_body(d, group_key, now) for d in warmup],
                              time.monotonic() + args.max_seconds)
        warm_statuses = Counter(str(o.status) if o.status is not None else "no answer" for o in warm)
        load.close()  # fresh connections: none has sat idle near the server's keep-alive timeout
        await load.connect()
        if args.pause_replication:
            log("pausing replication in every region")
            replication(fleet, regions, "pause")
        pids = {region: common.region_int(fleet, region, "pid") for region in regions}
        config = fleet.data.config()
        ports = {"peer_channel": {config.region(r).peer_port for r in regions},
                 "public_api": {config.region(r).http_port for r in regions}}
        closed_before = {name: closed_connections(group) for name, group in ports.items()}
        bodies = [signed_body(d, group_key, int(time.time())) for d in devices]
        log(f"run: {len(devices)} devices, {args.concurrency} clients")
        cpu_before, own_before = cpu_seconds(pids), common.self_cpu_seconds()
        started = time.perf_counter()
        outcomes = await load.run(devices, bodies, time.monotonic() + args.max_seconds)
        wall = time.perf_counter() - started
        cpu_after, own_after = cpu_seconds(pids), common.self_cpu_seconds()
        closed_after = {name: closed_connections(group) for name, group in ports.items()}
        if args.pause_replication:
            replication(fleet, regions, "resume")
    finally:
        load.close()
    run = summarize(outcomes, wall, len(devices) - len(outcomes), regions, continents)
    regions_cpu: dict[str, float | None] = {}
    for region in regions:
        before, after = cpu_before[region], cpu_after[region]
        regions_cpu[region] = round(100 * (after - before) / wall, 1) if before is not None and after is not None \
            else None
    regions_total = sum(v for v in regions_cpu.values() if v is not None)
    run["cpu_percent"] = {"regions": regions_cpu, "regions_total": round(regions_total, 1),
                          "bench_process": round(100 * (own_after - own_before) / wall, 1)}
    created = run["by_status"].get("201", 0)
    run["region_cpu_ms_per_device"] = round(10 * regions_total * wall / created, 2) if created else None
    run["connections_closed"] = {name: after - before if before is not None and after is not None else None
                                 for name, before, after in ((n, closed_before[n], closed_after[n]) for n in ports)}
    return {"warmup": {"sent": len(warm), "by_status": dict(sorted(warm_statuses.items()))}, "run": run}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=1500,
                        help="devices provisioned in the timed run (default 1500)")
    parser.add_argument("--concurrency", type=common.positive(int), default=16,
                        help="concurrent clients, each with at most one request in flight (default 16)")
    parser.add_argument("--warmup", type=common.not_negative(int), default=36,
                        help="requests before the timed run, not counted (default 36)")
    parser.add_argument("--timeout", type=common.positive(float), default=10.0,
                        help="seconds to wait for one answer (default 10)")
    parser.add_argument("--max-seconds", type=common.positive(float), default=60.0,
                        help="no request starts after this many seconds of the run (default 60); "
                             "must stay well under the service's 300 s clock-skew bound")
    parser.add_argument("--group-timeout", type=common.positive(float), default=30.0,
                        help="seconds to wait for the enrollment group to reach every region (default 30)")
    parser.add_argument("--pause-replication", action="store_true",
                        help="every region stops pulling changes from its peers during the timed run (POST "
                             "/replication/pause; resumed after it), to show what replication costs")
    regions = common.REGIONS
    parser.add_argument("--fleet-regions", type=int, default=len(regions), choices=range(1, len(regions) + 1),
                        help="regions in the fleet, the first N of " + ", ".join(regions) + " (default 3; 1 measures "
                             "one region alone: every guard local, no replication)")
    args = parser.parse_args(argv)
    if args.max_seconds + args.timeout > enrollment.MAX_SKEW_S - 30:
        parser.error(f"--max-seconds + --timeout must stay under {enrollment.MAX_SKEW_S - 30} s: requests are "
                     "signed before the run and expire after the service's clock-skew bound")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    regions = common.REGIONS[:args.fleet_regions]
    began, result = common.begin("provisioning", {
        "devices": args.devices, "concurrency": args.concurrency, "warmup": args.warmup, "regions": list(regions),
        "timeout_s": args.timeout, "max_seconds": args.max_seconds,
        "pause_replication": args.pause_replication, "source_address": PROXY,
        "trusted_proxies": [f"{PROXY}/32"], "forwarded_for": list(FORWARDED_FOR),
        "target": {"devices_per_s": TARGET_DEVICES_PER_S, "p99_ms": TARGET_P99_MS}},
        packages=(*common.PACKAGES, "cryptography", "fastapi", "uvicorn"))
    located = {ip: Geolocator().locate(ip) for ip in FORWARDED_FOR}
    continents = {ip: str(where.continent) for ip, where in located.items()}
    result["forwarded_for"] = [{"ip": ip, "country": where.country, "continent": where.continent}
                               for ip, where in located.items()]
    log(f"making {args.warmup + args.devices} keys and CSRs")
    keygen_started = time.monotonic()
    warmup = make_devices("bench-warm", args.warmup, regions)
    devices = make_devices("bench", args.devices, regions)
    setup: dict[str, Any] = {"keys_and_csrs_s": round(time.monotonic() - keygen_started, 2)}
    result["setup"] = setup
    with common.throwaway_fleet(regions, log, settings={"trusted_proxies": [f"{PROXY}/32"]}) as fleet:
        log(f"creating enrollment group {GROUP!r}")
        group_key, setup["group_replicated_s"] = create_group(fleet, regions, args.group_timeout)
        setup["seconds"] = round(time.monotonic() - began, 1)
        result.update(asyncio.run(provision_all(fleet, regions, group_key, warmup, devices, args, continents)))
    run = result["run"]
    p99 = run["latency_ms"]["p99"]
    rate = run["devices_per_s"]
    result["target_met"] = {
        "devices_per_s": rate is not None and rate >= TARGET_DEVICES_PER_S,
        "p99_ms": p99 is not None and p99 < TARGET_P99_MS,
        "all_201": run["by_status"] == {"201": run["sent"]} and run["not_sent"] == 0,
    }
    log(f"{rate} devices/s, p50 {run['latency_ms']['p50']} ms, p99 {p99} ms, statuses {run['by_status']}")
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
