"""A failover drill: take a region down under a running simulated fleet and measure.

1. the region's process is SIGKILLed (a crash) or SIGSTOPped (a black hole: the sockets stay
   open and nothing answers);
2. failover time, per device homed there: from the kill to the first QoS 1 message of the
   device acknowledged by another region;
3. the region is restarted (or SIGCONTed); fail-back time, per device: from the region being
   back to the device's first acknowledged message at home (``min_stay_s`` included);
4. (``account``) every device stops publishing and flushes its outbox; every telemetry message
   published must have reached the application's merged stream: the drill lists what was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofleet.app import FleetApp
from geofleet.client import fleet_app
from geofleet.cluster import LocalFleet
from geofleet.config import DEFAULT_REGIONS
from geofleet.domain.errors import ConfigError
from geofleet.domain.failover import FailoverOptions
from geofleet.simulation import SOURCE_ADDRESS, SimulatedDevice, Simulation, provision

Progress = Callable[[str], None]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p99": round(p99, 3), "max": round(ordered[-1], 3)}


@dataclass
class DrillResult:
    region: str
    mode: str
    devices: int
    affected: int
    failover_s: list[float] = field(default_factory=list)
    failback_s: list[float] = field(default_factory=list)
    published: int = 0
    received: int = 0
    lost: list[tuple[str, int]] = field(default_factory=list)
    duplicates_dropped: int = 0
    homes: dict[str, int] = field(default_factory=dict)
    during: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "mode": self.mode, "devices": self.devices, "affected": self.affected,
                "failoverSeconds": percentiles(self.failover_s), "failbackSeconds": percentiles(self.failback_s),
                "published": self.published, "received": self.received, "lost": len(self.lost),
                "lostExamples": self.lost[:10], "duplicatesDropped": self.duplicates_dropped,
                "homes": self.homes, "duringOutage": self.during, "afterFailback": self.after}


class Collector:
    """The application's view: every telemetry message from the merged stream of all regions."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._streams = contextlib.AsyncExitStack()

    async def start(self, app: FleetApp) -> None:
        stream = await self._streams.enter_async_context(app.events(["dt/+/telemetry"]))

        async def collect() -> None:
            async for event in stream:
                body = json.loads(event.payload)
                self.seen.setdefault(event.topic.split("/")[1], set()).add(int(body["seq"]))

        self._task = asyncio.create_task(collect())

    def missing(self, devices: list[SimulatedDevice]) -> list[tuple[str, int]]:
        return [(d.device_id, seq) for d in devices for seq in range(d.sent)
                if seq not in self.seen.get(d.device_id, ())]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._streams.aclose()


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)


def _stragglers(devices: list[SimulatedDevice], done: Callable[[SimulatedDevice], float | None]) -> str:
    left = [d for d in devices if not done(d)]
    examples = [f"{d.device_id} in {d.client.status.region if d.client else None}, "
                f"moves {[(m.region, m.reason) for m in (d.client.status.moves if d.client else ())][-3:]}, "
                f"last error {d.client.status.last_error if d.client else None}, "
                f"fail-back checks {d.client.status.failback_checks if d.client else None}, "
                f"doing: {d.client.status.doing if d.client else None}" for d in left[:3]]
    return f"{len(left)} of {len(devices)} devices not there, e.g. " + "; ".join(examples)


def _working(device: SimulatedDevice, since: float, where: Callable[[str], bool]) -> float | None:
    """When the device first had a message acknowledged in a session begun since ``since`` in a
    region ``where`` accepts; None if it has not yet."""
    assert device.client is not None
    for move in device.client.status.moves:
        if move.at >= since and where(move.region) and move.first_ack_at is not None:
            return move.first_ack_at
    return None


During = Callable[[FleetApp, list[SimulatedDevice]], Awaitable[None]]
"""Run while the region is down, every device working elsewhere (e.g. reach one of them)."""


async def drill(fleet: LocalFleet, sim: Simulation, app: FleetApp, collector: Collector, region: str, *,
                mode: str = "kill", timeout: float = 60.0, progress: Progress = print,
                during: During | None = None) -> DrillResult:
    affected = [d for d in sim.devices
                if d.home == region and d.client is not None and d.client.status.region == region]
    result = DrillResult(region, mode, len(sim.devices), len(affected), homes=dict(sim.homes()))
    progress(f"{'killing' if mode == 'kill' else 'black-holing'} {region}: {len(affected)} devices connected there")
    down_at = time.time()
    fleet.send_signal(region, signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
    def elsewhere(device: SimulatedDevice) -> float | None:
        return _working(device, down_at, lambda r: r != region)

    try:
        await wait_until(lambda: all(elsewhere(d) for d in affected), timeout,
                         f"every device of {region} working in another region")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {_stragglers(affected, elsewhere)}") from None
    result.failover_s = [(elsewhere(d) or 0.0) - down_at for d in affected]
    result.during = dict(sim.where())
    progress(f"all {len(affected)} devices of {region} work elsewhere: {dict(sim.where())}")
    if during is not None:
        await during(app, affected)
    if mode == "kill":
        progress(f"restarting {region}")
        fleet.restart(region, timeout=None)  # from this thread: the region must outlive no worker thread
        await asyncio.to_thread(fleet.wait_ready, region)
    else:
        fleet.send_signal(region, signal.SIGCONT)
    back_at = time.time()
    progress(f"{region} is back; devices return after their minimum stay ({sim.options.min_stay_s:g} s)")
    def home(device: SimulatedDevice) -> float | None:
        return _working(device, back_at, lambda r: r == region)

    try:
        await wait_until(lambda: all(home(d) for d in affected),
                         timeout + sim.options.min_stay_s + 2 * sim.options.failback_interval_s,
                         f"every device of {region} back home")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {_stragglers(affected, home)}") from None
    result.failback_s = [(home(d) or 0.0) - back_at for d in affected]
    result.after = dict(sim.where())
    progress(f"all devices of {region} are home again: {dict(sim.where())}")
    return result


async def account(sim: Simulation, app: FleetApp, collector: Collector, result: DrillResult,
                  timeout: float = 60.0) -> None:
    """Stop publishing, flush every outbox, and count what reached the application."""
    await sim.stop_publishing(flush_timeout=timeout)
    result.published = sum(d.sent for d in sim.devices)
    with contextlib.suppress(TimeoutError):  # what is missing then is reported as lost
        await wait_until(lambda: not collector.missing(sim.devices), 30.0, "every message at the application")
    result.lost = collector.missing(sim.devices)
    result.received = result.published - len(result.lost)
    result.duplicates_dropped = app.duplicates_dropped


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """A plain text table: first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(result: DrillResult) -> str:
    fo, fb = percentiles(result.failover_s), percentiles(result.failback_s)
    regions = sorted(set(result.homes) | set(result.during) | set(result.after))
    rows = [("region", "devices homed there", "connected there during the outage", "connected there after fail-back")]
    rows += [(r, str(result.homes.get(r, 0)), str(result.during.get(r, 0)), str(result.after.get(r, 0)))
             for r in regions]
    measures = [(f"seconds, over the {result.affected} devices of {result.region}", "p50", "p99", "max"),
                (f"failover: {result.region} {'killed' if result.mode == 'kill' else 'black-holed'} -> first "
                 "message acknowledged in another region", str(fo["p50"]), str(fo["p99"]), str(fo["max"])),
                (f"fail-back: {result.region} ready again -> first message acknowledged at home",
                 str(fb["p50"]), str(fb["p99"]), str(fb["max"]))]
    counts = Counter({"published by the devices (QoS 1)": result.published,
                      "received by the application": result.received, "lost": len(result.lost),
                      "duplicates dropped by the application": result.duplicates_dropped})
    note = ("A device goes home once its home is healthy and it has stayed away at least min_stay_s, counted "
            "from its failover, not from the home's return: so fail-back can be shorter than min_stay_s.")
    return "\n\n".join([table(rows), table(measures), note,
                        table([("messages", "count"), *((k, str(v)) for k, v in counts.items())])])


@dataclass
class Stage:
    """A fleet of its own with simulated devices running and the application listening."""

    fleet: LocalFleet
    sim: Simulation
    app: FleetApp
    collector: Collector


@contextlib.asynccontextmanager
async def stage(root: Path, *, devices: int, regions: tuple[str, ...] = DEFAULT_REGIONS,
                options: FailoverOptions | None = None, interval_s: float = 2.0,
                progress: Progress = print) -> AsyncIterator[Stage]:
    """Start a fleet in ``root``, provision ``devices`` simulated devices worldwide, open the
    application's merged stream, run the devices until every one is connected; stop it all
    on exit."""
    progress(f"starting {len(regions)} regions in {root}")
    fleet = LocalFleet.start(root, regions, settings={"trusted_proxies": [f"{SOURCE_ADDRESS}/32"]})
    try:
        simulated = await asyncio.to_thread(provision, root, devices, root / "devices", progress=progress)
        homes = sorted({(d.country, d.home) for d in simulated}, key=lambda pair: (pair[1], pair[0]))
        progress("homes by country: " + ", ".join(f"{country}->{home}" for country, home in homes))
        async with fleet_app(root) as app:
            collector = Collector()
            await collector.start(app)
            sim = Simulation(simulated, options or FailoverOptions(keepalive_s=5, min_stay_s=10, failback_interval_s=2),
                             interval_s=interval_s)
            try:
                await sim.start()
                await sim.wait_connected(120)
                progress("every device connected: " + ", ".join(f"{r} {n}" for r, n in sorted(sim.where().items())))
                yield Stage(fleet, sim, app, collector)
            finally:
                await sim.stop()
                await collector.stop()
    finally:
        fleet.stop()


async def drill_new_fleet(root: Path, *, kill: str, devices: int, regions: tuple[str, ...] = DEFAULT_REGIONS,
                          mode: str = "kill", options: FailoverOptions | None = None, interval_s: float = 2.0,
                          progress: Progress = print, during: During | None = None) -> DrillResult:
    """The whole drill on a fleet of its own (``stage``): take ``kill`` down and bring it back,
    then account for every message."""
    if kill not in regions:
        raise ConfigError(f"cannot drill {kill!r}: the regions are {', '.join(regions)}")
    async with stage(root, devices=devices, regions=regions, options=options, interval_s=interval_s,
                     progress=progress) as on:
        result = await drill(on.fleet, on.sim, on.app, on.collector, kill, mode=mode, progress=progress,
                             during=during)
        await account(on.sim, on.app, on.collector, result)
        return result
