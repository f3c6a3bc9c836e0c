#!/usr/bin/env python3
"""Device shadow update round trips against a real geofleet region node.

What is measured: the time from a device publishing ``$aws/things/<name>/shadow/update``
(QoS 1, a unique ``clientToken`` in every request) to the same device receiving the matching
``$aws/things/<name>/shadow/update/accepted`` (matched by ``clientToken``), and how many
updates per second one region serves.

How: the script creates a throw-away three-region fleet (``geofleet.cluster.LocalFleet``:
``geofleet up`` with regions us-east-1, eu-west-1 and ap-southeast-1 on free loopback ports),
creates N devices (``geofleet device create``, one certificate each, default device policy),
and connects them all to one region with paho-mqtt over mutual TLS, each subscribed to its own
``update/accepted`` and ``update/rejected`` topics. After a one-second warm-up, two phases:

1. rate-limited (open loop): one sender thread publishes updates round-robin over the devices
   at ``--rate`` updates/s in total for ``--seconds``, whether or not earlier ones were
   answered, so queueing in the node shows up as latency (no coordinated omission);
2. unthrottled (closed loop): for ``--max-seconds`` the sender publishes (round-robin over the
   devices) whenever fewer than ``--window`` x devices requests are unanswered; the answered
   rate is the node's maximum throughput, and the latency is then mostly queueing (about
   outstanding requests / rate).

After each phase the script waits up to ``--drain`` seconds for late answers; requests still
unanswered then are reported as lost. The CPU use of the region process and of this process
during each phase is reported too (from /proc). Latencies include the paho client threads of this
process (one per device), which share the machine's CPUs with the region processes.

Prints one JSON object on stdout; progress goes to stderr. Everything stays on 127.0.0.1 and
the fleet is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import paho.mqtt.client as mqtt

log = common.logger("shadow_updates")


@dataclass
class Phase:
    """The requests of one phase, and their answers, shared by the sender and paho threads."""

    name: str
    window: threading.Semaphore | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[str, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    sent: int = 0
    send_errors: int = 0
    accepted: int = 0
    rejected: int = 0
    unmatched: int = 0
    first_send_ns: int = 0
    last_send_ns: int = 0
    last_answer_ns: int = 0

    def will_send(self, token: str) -> None:
        now = time.perf_counter_ns()
        with self.lock:
            self.pending[token] = now
            self.sent += 1
            self.first_send_ns = self.first_send_ns or now
            self.last_send_ns = now

    def send_failed(self, token: str) -> None:
        with self.lock:
            self.pending.pop(token, None)
            self.sent -= 1
            self.send_errors += 1
        if self.window is not None:
            self.window.release()

    def answer(self, token: str | None, accepted: bool) -> None:
        now = time.perf_counter_ns()
        with self.lock:
            start = self.pending.pop(token, None) if token is not None else None
            if start is None:
                self.unmatched += 1
                return
            self.latencies_ns.append(now - start)
            self.last_answer_ns = now
            if accepted:
                self.accepted += 1
            else:
                self.rejected += 1
        if self.window is not None:
            self.window.release()

    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)

    def report(self) -> dict[str, Any]:
        with self.lock:
            answered = self.accepted + self.rejected
            send_s = (self.last_send_ns - self.first_send_ns) / 1e9
            answer_s = (self.last_answer_ns - self.first_send_ns) / 1e9
            return {
                "sent": self.sent,
                "answered": answered,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "lost": len(self.pending),
                "send_errors": self.send_errors,
                "unmatched_answers": self.unmatched,
                "send_seconds": round(send_s, 3),
                "sent_per_s": round(self.sent / send_s, 1) if send_s > 0 else None,
                "answered_per_s": round(answered / answer_s, 1) if answer_s > 0 else None,
                "latency_ms": common.distribution(common.ns_to_ms(self.latencies_ns), digits=3),
            }


class DeviceClient(common.Session):
    """One device: a ``Session`` subscribed to its own shadow's update answers, which it hands to
    the bench's current phase."""

    def __init__(self, name: str, certs: Path, bench: Bench) -> None:
        super().__init__(name, certs)
        self.bench = bench
        self.update_topic = f"$aws/things/{name}/shadow/update"
        self.client.on_message = self._on_message

    def subscribe(self) -> None:
        self.client.subscribe([(f"{self.update_topic}/accepted", 1), (f"{self.update_topic}/rejected", 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        phase = self.bench.phase
        if phase is None:
            return
        try:
            token = json.loads(message.payload).get("clientToken")
        except (ValueError, AttributeError):
            token = None
        phase.answer(token, message.topic.endswith("/accepted"))


class Bench:
    """The connected devices and the phase that is running, if any."""

    def __init__(self, node_pid: int) -> None:
        self.node_pid = node_pid
        self.phase: Phase | None = None
        self.devices: list[DeviceClient] = []

    def connect(self, names: list[str], port: int, certs: Path, timeout: float = 30.0) -> None:
        self.devices = [DeviceClient(name, certs, self) for name in names]
        for device in self.devices:
            device.start(port)
        deadline = time.monotonic() + timeout
        for device in self.devices:
            device.wait_connected(deadline - time.monotonic())
            device.subscribe()
        for device in self.devices:
            device.wait_subscribed(deadline - time.monotonic())

    def unexpected_disconnects(self) -> list[str]:
        return [f"{device.name}: {reason}" for device in self.devices for reason in device.disconnects]

    def close(self) -> None:
        for device in self.devices:
            device.stop()

    def run(self, name: str, seconds: float, rate: float | None, window: int, drain: float) -> dict[str, Any]:
        """Send updates for ``seconds``: paced at ``rate``/s in total, or, if ``rate`` is None,
        as fast as answers come back with ``window`` x devices requests outstanding."""
        phase = Phase(name, threading.Semaphore(window * len(self.devices)) if rate is None else None)
        self.phase = phase
        devices = self.devices
        node_cpu, own_cpu = common.process_cpu_seconds(self.node_pid), common.self_cpu_seconds()
        start = time.perf_counter()
        i = 0
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            if rate is not None:
                due = int(elapsed * rate) + 1
                while i < due:
                    self._send(phase, devices[i % len(devices)], f"{name}-{i}", i)
                    i += 1
                time.sleep(0.0005)
            else:
                assert phase.window is not None
                if phase.window.acquire(timeout=0.1):
                    self._send(phase, devices[i % len(devices)], f"{name}-{i}", i)
                    i += 1
        deadline = time.monotonic() + drain
        while phase.outstanding() and time.monotonic() < deadline:
            time.sleep(0.01)
        wall = time.perf_counter() - start
        node_cpu_after = common.process_cpu_seconds(self.node_pid)
        report = phase.report()
        report["cpu_percent"] = {
            "region_process": round(100 * (node_cpu_after - node_cpu) / wall, 1)
            if node_cpu is not None and node_cpu_after is not None else None,
            "bench_process": round(100 * (common.self_cpu_seconds() - own_cpu) / wall, 1),
        }
        self.phase = None
        return report

    @staticmethod
    def _send(phase: Phase, device: DeviceClient, token: str, reading: int) -> None:
        payload = json.dumps({"state": {"reported": {"reading": reading, "ok": True}}, "clientToken": token},
                             separators=(",", ":"))
        phase.will_send(token)
        info = device.client.publish(device.update_topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            phase.send_failed(token)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=20, help="concurrent devices (default 20)")
    parser.add_argument("--rate", type=common.positive(float), default=500.0,
                        help="target updates/s over all devices (default 500)")
    parser.add_argument("--seconds", type=common.positive(float), default=10.0,
                        help="duration of the rate-limited phase (default 10)")
    parser.add_argument("--max-seconds", type=float, default=5.0,
                        help="duration of the unthrottled phase; 0 skips it (default 5)")
    parser.add_argument("--window", type=common.positive(int), default=4,
                        help="unanswered requests per device in the unthrottled phase (default 4)")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers (default 5)")
    regions = common.REGIONS
    parser.add_argument("--region", default=regions[0], choices=regions, help="region the devices connect to")
    parser.add_argument("--fleet-regions", type=int, default=len(regions), choices=range(1, len(regions) + 1),
                        help="regions in the fleet (1 measures one region alone, without replicas sharing the cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    regions = common.REGIONS[:args.fleet_regions]
    if args.region not in regions:
        raise SystemExit(f"--region {args.region} is not among the first {args.fleet_regions} regions {regions}")
    began, result = common.begin("shadow_updates", {
        "devices": args.devices, "region": args.region, "regions": list(regions), "target_rate": args.rate,
        "seconds": args.seconds, "max_seconds": args.max_seconds, "window_per_device": args.window,
        "drain_seconds": args.drain, "qos": 1})
    with common.throwaway_fleet(regions, log) as fleet:
        bench = Bench(common.region_int(fleet, args.region, "pid"))
        try:
            names = [f"bench-dev-{i:03d}" for i in range(args.devices)]
            log(f"creating {len(names)} devices in {args.region}")
            common.create_devices(fleet, names, args.region)
            log("connecting devices")
            bench.connect(names, common.region_int(fleet, args.region, "mqtt_port"), common.devices_dir(fleet))
            result["setup_seconds"] = round(time.monotonic() - began, 1)
            log("warming up")
            bench.run("warmup", 1.0, min(args.rate, 100.0), args.window, args.drain)
            log(f"rate-limited phase: {args.rate:g} updates/s for {args.seconds:g} s")
            result["rate_limited"] = bench.run("rate", args.seconds, args.rate, args.window, args.drain)
            log(f"  {json.dumps(result['rate_limited'])}")
            if args.max_seconds > 0:
                log(f"unthrottled phase: {args.window} outstanding per device for {args.max_seconds:g} s")
                result["unthrottled"] = bench.run("max", args.max_seconds, None, args.window, args.drain)
                log(f"  {json.dumps(result['unthrottled'])}")
            result["unexpected_disconnects"] = bench.unexpected_disconnects()
        finally:
            bench.close()
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
