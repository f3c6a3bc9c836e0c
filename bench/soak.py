#!/usr/bin/env python3
"""Soak: a region under steady device traffic for minutes; memory, latency and disk must stay flat.

What is measured, per window (``--window``, default 60 s): the resident memory (VmRSS) of every
region process, the shadow update round trip (publish ``$aws/things/<name>/shadow/update`` with
a unique ``clientToken`` -> the matching ``update/accepted``) as p50/p99 over the requests sent
in that window, and the size of every region's ``store.db`` (with its ``-wal``).

How: the script creates a throw-away three-region fleet (``geofleet up`` on free loopback ports)
and ``--devices`` devices (default 50, default device policy) in ``--region``, connected with
paho-mqtt over mutual TLS. One sender thread then runs an open loop at ``--rate`` operations/s
(default 200) for ``--seconds`` (default 600), round-robin over the connected devices,
alternating a shadow update and a QoS 1 publish to a topic never used before
(``dt/<name>/<sequence>``), the pattern that grows per-topic state in a broker. A churn thread
disconnects and reconnects one device every ``1 / --reconnects`` seconds (default 2/s), so
closed connections keep being freed, or not.

Each window also records how many of its shadow requests were still unanswered 2 s after it
ended, and the machine's load average: on a shared machine a slow window may be someone else's.

The verdict checks what must hold on a long-running region: after the first (warm-up) window,
each region's RSS grows by less than 5 %; the last window's shadow p99 is within 2x the first's;
each store.db grows by less than 5 % over the last window (bounded, not creeping).

Prints one JSON object on stdout; progress goes to stderr. Everything stays on 127.0.0.1 and
the fleet is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import paho.mqtt.client as mqtt

log = common.logger("soak")

RSS_GROWTH_LIMIT = 0.05
P99_RATIO_LIMIT = 2.0
STORE_GROWTH_LIMIT = 0.05


@dataclass
class Window:
    """The shadow requests sent during one sampling window and their round trips."""

    index: int
    pending: dict[str, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    shadow_sent: int = 0
    published: int = 0


class Traffic:
    """Shared between the sender, the churn thread and the paho threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window = Window(0)
        self.owner: dict[str, Window] = {}
        """clientToken -> the window that sent it (answers may arrive in the next window)."""
        self.unmatched = 0
        self.rejected = 0

    def sent(self, token: str) -> None:
        with self.lock:
            self.window.pending[token] = time.perf_counter_ns()
            self.window.shadow_sent += 1
            self.owner[token] = self.window

    def answered(self, token: str | None, accepted: bool) -> None:
        now = time.perf_counter_ns()
        with self.lock:
            window = self.owner.pop(token, None) if token is not None else None
            start = window.pending.pop(token, None) if window is not None and token is not None else None
            if window is None or start is None:
                self.unmatched += 1
                return
            window.latencies_ns.append(now - start)
            if not accepted:
                self.rejected += 1

    def outstanding(self, window: Window) -> int:
        with self.lock:
            return len(window.pending)

    def next_window(self) -> Window:
        with self.lock:
            finished, self.window = self.window, Window(self.window.index + 1)
            return finished


class SoakDevice(common.Session):
    def __init__(self, name: str, certs: Path, traffic: Traffic) -> None:
        super().__init__(name, certs)
        self.traffic = traffic
        self.client.on_message = self._on_message

    def subscribe(self) -> None:
        base = f"$aws/things/{self.name}/shadow/update"
        self.client.subscribe([(f"{base}/accepted", 1), (f"{base}/rejected", 1)])

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        super()._on_connect(client, userdata, flags, reason, properties)
        if not reason.is_failure:
            self.subscribe()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            token = json.loads(message.payload).get("clientToken")
        except ValueError:
            token = None
        self.traffic.answered(token, message.topic.endswith("/accepted"))


class Soak:
    def __init__(self, names: list[str], port: int, certs: Path, traffic: Traffic) -> None:
        self.port, self.certs, self.traffic = port, certs, traffic
        self.devices: dict[str, SoakDevice] = {}
        self.replaced = 0
        self.lock = threading.Lock()
        for name in names:
            self.devices[name] = self._start(name)
        for device in self.devices.values():
            device.wait_connected(30)
            device.wait_subscribed(30)

    def _start(self, name: str) -> SoakDevice:
        device = SoakDevice(name, self.certs, self.traffic)
        device.start(self.port)
        return device

    def send(self, stop: threading.Event, rate: float) -> None:
        names = itertools.cycle(sorted(self.devices))
        sequence = itertools.count()
        started = time.monotonic()
        for n in itertools.count():
            if stop.is_set():
                return
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            with self.lock:
                device = self.devices[next(names)]
            if not device.subscribed.is_set() or device.closing:
                continue
            number = next(sequence)
            if n % 2 == 0:
                token = f"{device.name}-{number}"
                self.traffic.sent(token)
                payload = {"state": {"reported": {"n": number}}, "clientToken": token}
                device.client.publish(f"$aws/things/{device.name}/shadow/update", json.dumps(payload), 1)
            else:
                device.client.publish(f"dt/{device.name}/{number}", b"x" * 64, 1)
                with self.traffic.lock:
                    self.traffic.window.published += 1

    def churn(self, stop: threading.Event, per_second: float) -> None:
        names = itertools.cycle(sorted(self.devices))
        while not stop.wait(1 / per_second):
            name = next(names)
            with self.lock:
                old = self.devices[name]
            old.stop()
            fresh = self._start(name)
            with self.lock:
                self.devices[name] = fresh
                self.replaced += 1

    def unexpected_disconnects(self) -> int:
        with self.lock:
            return sum(len(d.disconnects) for d in self.devices.values())

    def close(self) -> None:
        with self.lock:
            devices = list(self.devices.values())
        for device in devices:
            device.stop()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def store_mb(root: Path) -> float:
    store = root / "store.db"
    files = [store, store.with_name("store.db-wal")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 2)


def verdict(samples: list[dict[str, Any]], regions: list[str]) -> dict[str, Any]:
    if len(samples) < 2:
        return {"ok": None, "why": "fewer than two windows: run longer than two --window"}
    first, last = samples[0], samples[-1]
    rss = {r: (last["rss_mb"][r] - first["rss_mb"][r]) / first["rss_mb"][r]
           for r in regions if first["rss_mb"][r] and last["rss_mb"][r]}
    before_last = samples[-2]["store_mb"]
    store = {r: (last["store_mb"][r] - before_last[r]) / before_last[r] for r in regions if before_last[r]}
    p99_first, p99_last = first["shadow_ms"]["p99"], last["shadow_ms"]["p99"]
    p99_ratio = p99_last / p99_first if p99_first and p99_last else None
    holds = {
        "rss_growth_after_warmup_below_5_percent": all(g < RSS_GROWTH_LIMIT for g in rss.values()),
        "p99_last_within_2x_first": p99_ratio is not None and p99_ratio <= P99_RATIO_LIMIT,
        "store_growth_last_window_below_5_percent": all(g < STORE_GROWTH_LIMIT for g in store.values()),
    }
    return {"ok": all(holds.values()), "holds": holds,
            "rss_growth": {r: round(g, 4) for r, g in rss.items()},
            "p99_ratio": round(p99_ratio, 2) if p99_ratio is not None else None,
            "store_growth_last_window": {r: round(g, 4) for r, g in store.items()}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=50, help="devices (default 50)")
    parser.add_argument("--rate", type=common.positive(float), default=200.0,
                        help="operations/s over all devices, half shadow updates (default 200)")
    parser.add_argument("--seconds", type=common.positive(float), default=600.0,
                        help="duration, rounded up to whole windows (default 600)")
    parser.add_argument("--window", type=common.positive(float), default=60.0,
                        help="sampling window in seconds (default 60)")
    parser.add_argument("--reconnects", type=common.positive(float), default=2.0,
                        help="device reconnects per second (default 2)")
    parser.add_argument("--region", default=common.REGIONS[0], choices=common.REGIONS,
                        help="region the devices connect to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    regions = list(common.REGIONS)
    began, result = common.begin("soak", {
        "devices": args.devices, "rate": args.rate, "seconds": args.seconds, "window": args.window,
        "reconnects_per_second": args.reconnects, "region": args.region, "regions": regions})
    with common.throwaway_fleet(regions, log) as fleet:
        pids = {r: common.region_int(fleet, r, "pid") for r in regions}
        names = [f"soak-dev-{i:03d}" for i in range(args.devices)]
        log(f"creating {len(names)} devices in {args.region}")
        common.create_devices(fleet, names, args.region)
        traffic = Traffic()
        soak = Soak(names, common.region_int(fleet, args.region, "mqtt_port"), common.devices_dir(fleet), traffic)
        stop = threading.Event()
        threads = [threading.Thread(target=soak.send, args=(stop, args.rate), daemon=True),
                   threading.Thread(target=soak.churn, args=(stop, args.reconnects), daemon=True)]
        samples: list[dict[str, Any]] = []
        try:
            log(f"{args.rate:g} ops/s for {args.seconds:g} s, sampled every {args.window:g} s")
            for thread in threads:
                thread.start()
            start = time.monotonic()
            for index in range(max(1, math.ceil(args.seconds / args.window - 1e-9))):
                stop.wait(max(0.0, start + (index + 1) * args.window - time.monotonic()))
                window = traffic.next_window()
                settle_until = time.monotonic() + 2.0  # the window's last answers are still in flight
                while time.monotonic() < settle_until and traffic.outstanding(window):
                    stop.wait(0.05)
                sample = {
                    "window": window.index, "at_s": round(time.monotonic() - start, 1),
                    "rss_mb": {r: rss_mb(pid) for r, pid in pids.items()},
                    "store_mb": {r: store_mb(fleet.data.region(r).root) for r in regions},
                    "shadow_sent": window.shadow_sent, "published_new_topics": window.published,
                    "shadow_unanswered_after_2s": traffic.outstanding(window),
                    "load_average": common.load_average(),
                    "shadow_ms": common.distribution(common.ns_to_ms(window.latencies_ns), digits=2,
                                                     quantiles=(50, 99), count=True),
                }
                samples.append(sample)
                log(json.dumps(sample))
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            soak.close()
        result["samples"] = samples
        result["reconnected"] = soak.replaced
        result["unmatched_answers"] = traffic.unmatched
        result["rejected"] = traffic.rejected
        result["unexpected_disconnects"] = soak.unexpected_disconnects()
        result["verdict"] = verdict(samples, regions)
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
