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
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from geofleet.cluster import LocalFleet
from geofleet.domain.errors import GeofleetError

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f"[shadow_updates] {message}", file=sys.stderr, flush=True)


# -- a throw-away fleet ----------------------------------------------------------------------


def geofleet(*args: str, timeout: float = 60.0) -> str:
    """Run the geofleet CLI; raise with its stderr if it fails."""
    result = subprocess.run([sys.executable, "-m", "geofleet", *args], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"geofleet {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def start_fleet(root: Path, regions: tuple[str, ...]) -> LocalFleet:
    """``LocalFleet.start`` (init on free loopback ports + ``geofleet up``), with the end of the
    fleet's logs in the error if it does not start (the directory is deleted afterwards)."""
    try:
        fleet = LocalFleet.start(root, regions)
    except GeofleetError as error:
        logs = [root / "up.log", *(root / "regions" / r / "node.log" for r in regions)]
        tails = "".join(f"\n--- {p.name} ({p.parent.name}):\n{p.read_text(errors='replace')[-1500:]}"
                        for p in logs if p.exists())
        raise RuntimeError(f"{error.message}{tails}") from None
    devices_dir(fleet).mkdir()
    return fleet


def devices_dir(fleet: LocalFleet) -> Path:
    return fleet.data.root / "devices"


def region_int(fleet: LocalFleet, region: str, key: str) -> int:
    """An integer (port, pid) from the fleet's cluster.json for one region."""
    return int(str(fleet.region(region)[key]))


def create_devices(fleet: LocalFleet, names: list[str], region: str, workers: int = 4) -> None:
    def create(name: str) -> None:
        geofleet("device", "create", name, "--data-dir", str(fleet.data.root), "--region", region,
                 "--out", str(devices_dir(fleet)), "--json")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(create, names))


# -- measuring -------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ns: list[int]) -> dict[str, float | None]:
    values = sorted(v / 1e6 for v in latencies_ns)
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }


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
                "latency_ms": latency_summary(self.latencies_ns),
            }


class DeviceClient:
    """One device: a paho client with its own network thread and certificate."""

    def __init__(self, name: str, port: int, certs: Path, bench: Bench) -> None:
        self.name = name
        self.port = port
        self.bench = bench
        self.update_topic = f"$aws/things/{name}/shadow/update"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connect_failure: str | None = None
        self.subscribe_failure: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
        self.client.tls_set(ca_certs=str(certs / "root-ca.pem"), certfile=str(certs / f"{name}.cert.pem"),
                            keyfile=str(certs / f"{name}.key.pem"))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self.client.connect(HOST, self.port, keepalive=60)
        # paho leaves Nagle on: a PUBACK followed by the next small write would wait for a delayed ACK.
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()

    def subscribe(self) -> None:
        self.client.subscribe([(f"{self.update_topic}/accepted", 1), (f"{self.update_topic}/rejected", 1)])

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.connect_failure = str(reason)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self.subscribe_failure = ", ".join(failed)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        phase = self.bench.phase
        if phase is None:
            return
        try:
            token = json.loads(message.payload).get("clientToken")
        except (ValueError, AttributeError):
            token = None
        phase.answer(token, message.topic.endswith("/accepted"))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not self.bench.closing:
            self.bench.unexpected_disconnects.append(f"{self.name}: {reason}")


class Bench:
    def __init__(self, node_pid: int) -> None:
        self.node_pid = node_pid
        self.phase: Phase | None = None
        self.closing = False
        self.unexpected_disconnects: list[str] = []
        self.devices: list[DeviceClient] = []

    def connect(self, names: list[str], port: int, certs: Path, timeout: float = 30.0) -> None:
        self.devices = [DeviceClient(name, port, certs, self) for name in names]
        for device in self.devices:
            device.start()
        deadline = time.monotonic() + timeout
        for device in self.devices:
            if not device.connected.wait(max(0.0, deadline - time.monotonic())) or device.connect_failure:
                raise RuntimeError(f"device {device.name} did not connect: {device.connect_failure or 'timeout'}")
            device.subscribe()
        for device in self.devices:
            if not device.subscribed.wait(max(0.0, deadline - time.monotonic())) or device.subscribe_failure:
                raise RuntimeError(f"device {device.name} was not subscribed: {device.subscribe_failure or 'timeout'}")

    def close(self) -> None:
        self.closing = True
        for device in self.devices:
            device.stop()

    def run(self, name: str, seconds: float, rate: float | None, window: int, drain: float) -> dict[str, Any]:
        """Send updates for ``seconds``: paced at ``rate``/s in total, or, if ``rate`` is None,
        as fast as answers come back with ``window`` x devices requests outstanding."""
        phase = Phase(name, threading.Semaphore(window * len(self.devices)) if rate is None else None)
        self.phase = phase
        devices = self.devices
        node_cpu, own_cpu = process_cpu_seconds(self.node_pid), self_cpu_seconds()
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
        node_cpu_after = process_cpu_seconds(self.node_pid)
        report = phase.report()
        report["cpu_percent"] = {
            "region_process": round(100 * (node_cpu_after - node_cpu) / wall, 1)
            if node_cpu is not None and node_cpu_after is not None else None,
            "bench_process": round(100 * (self_cpu_seconds() - own_cpu) / wall, 1),
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


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("geofleet", "amqtt", "paho-mqtt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            **versions, "load_average_before": load_average()}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the numbers."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=20, help="concurrent devices (default 20)")
    parser.add_argument("--rate", type=float, default=500.0, help="target updates/s over all devices (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the rate-limited phase (default 10)")
    parser.add_argument("--max-seconds", type=float, default=5.0,
                        help="duration of the unthrottled phase; 0 skips it (default 5)")
    parser.add_argument("--window", type=int, default=4,
                        help="unanswered requests per device in the unthrottled phase (default 4)")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers (default 5)")
    parser.add_argument("--region", default=REGIONS[0], choices=REGIONS, help="region the devices connect to")
    parser.add_argument("--fleet-regions", type=int, default=len(REGIONS), choices=range(1, len(REGIONS) + 1),
                        help="regions in the fleet (1 measures one region alone, without replicas sharing the cores)")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rate <= 0 or args.seconds <= 0 or args.window < 1:
        parser.error("--devices, --rate, --seconds and --window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up on SIGTERM too
    began = time.monotonic()
    regions = REGIONS[:args.fleet_regions]
    if args.region not in regions:
        raise SystemExit(f"--region {args.region} is not among the first {args.fleet_regions} regions {regions}")
    result: dict[str, Any] = {
        "benchmark": "shadow_updates",
        "config": {"devices": args.devices, "region": args.region, "regions": list(regions),
                   "target_rate": args.rate, "seconds": args.seconds, "max_seconds": args.max_seconds,
                   "window_per_device": args.window, "drain_seconds": args.drain, "qos": 1},
        "environment": environment(),
    }
    with tempfile.TemporaryDirectory(prefix="geofleet-bench-") as tmp:
        log(f"starting a {len(regions)}-region fleet in {tmp}")
        fleet = start_fleet(Path(tmp) / "fleet", regions)
        bench = Bench(region_int(fleet, args.region, "pid"))
        try:
            names = [f"bench-dev-{i:03d}" for i in range(args.devices)]
            log(f"creating {len(names)} devices in {args.region}")
            create_devices(fleet, names, args.region)
            log("connecting devices")
            bench.connect(names, region_int(fleet, args.region, "mqtt_port"), devices_dir(fleet))
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
            result["unexpected_disconnects"] = list(bench.unexpected_disconnects)
        finally:
            bench.close()
            fleet.stop()
    result["environment"]["load_average_after"] = load_average()
    result["total_seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
