"""What the benchmark scripts in this directory share: their environment record, statistics,
progress logging, the throw-away fleet and its devices, paho-mqtt device sessions, CPU time and
the command-line plumbing, and a minimal HTTP/1.1 client.

Each script (``python bench/X.py``) has this directory on ``sys.path``, so ``import common``
finds this module (``mypy`` finds it through ``mypy_path = "bench"``). Importing it also puts the
repository root on ``sys.path``: the scripts reuse the tests' helpers (``tests.helpers``: waiting
on a condition with a deadline) rather than keep a copy. Keeping these pieces in one place means
the scripts report the same things the same way (the same percentile, the same environment
fields, the same TLS and socket set-up for devices), so their figures can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from geofleet.cluster import LocalFleet
from geofleet.domain.errors import GeofleetError

# The repository root, for ``tests.helpers`` (see the module docstring).
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
"""The regions of a benchmark fleet, in the order ``geofleet up`` is given them."""

HOST = "127.0.0.1"
"""Everything a benchmark starts listens on loopback only."""

PACKAGES = ("geofleet", "amqtt", "paho-mqtt")
"""Packages whose versions every result records: the figures depend on them."""

N = TypeVar("N", int, float)  # the number type of a checked option (``positive``, ``not_negative``)


# -- progress and results --------------------------------------------------------------------


def logger(name: str) -> Callable[[str], None]:
    """A ``log(message)`` that writes ``[name] message`` to stderr, flushed at once.

    Why stderr: stdout carries only the one JSON result, so it can be piped or redirected as is,
    while progress still shows up live (and says which script it comes from)."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where unavailable.

    Why: other work on the machine skews the numbers; recording the load before and after a run
    shows whether it did."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """The ``environment`` object of a result: Python, platform, CPU count, the versions of
    ``packages`` (None if not installed) and the load average before the run.

    Why: a figure means little without the machine and the versions it was measured with."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            **versions, "load_average_before": load_average()}


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of a script's docstring.

    Why: the module docstring is where each script explains what it measures; ``--help`` should
    say the same thing without repeating it."""
    return argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)


def positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    """An argparse ``type``: the option's value parsed with ``kind`` (int or float), rejected
    unless it is greater than 0.

    Why: counts, rates and durations of 0 or less make no run; argparse then names the option
    in its error, and the check sits next to the option it is about."""
    return _checked(kind, lambda value: value > 0, "greater than 0")


def not_negative(kind: Callable[[str], N]) -> Callable[[str], N]:
    """An argparse ``type``: the option's value parsed with ``kind`` (int or float), rejected if
    it is less than 0.

    Why: for options where 0 means "none" or "skip" but a negative value means nothing."""
    return _checked(kind, lambda value: value >= 0, "at least 0")


def _checked(kind: Callable[[str], N], ok: Callable[[N], bool], what: str) -> Callable[[str], N]:
    """The argparse ``type`` behind ``positive`` and ``not_negative``: parse with ``kind``, then
    ``ok`` or ArgumentTypeError saying the value must be ``what``.

    Why ArgumentTypeError: argparse prints its message with the option's name and exits 2, like
    any other bad argument."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
        return value

    return parse


def begin(benchmark: str, config: dict[str, Any], packages: Sequence[str] = PACKAGES
          ) -> tuple[float, dict[str, Any]]:
    """Start a run: make SIGTERM raise ``SystemExit`` (status 128 + 15), note the start time (the
    monotonic clock) and return it with the result's first fields: ``benchmark``, ``config`` and
    ``environment`` (with the versions of ``packages``).

    Why the SIGTERM handler: the scripts stop their fleet and delete its directory in ``finally``
    blocks and context managers, which a plain SIGTERM would skip, leaving region processes
    running. Why here: every result starts with the same fields, in the same order."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    began = time.monotonic()
    return began, {"benchmark": benchmark, "config": config, "environment": environment(packages)}


def finish(result: dict[str, Any], began: float) -> int:
    """Complete a result (load average after the run, total seconds since ``began``), print it as
    JSON on stdout and return the exit status 0.

    Why: every script ends the same way, so every result has the same closing fields."""
    result["environment"]["load_average_after"] = load_average()
    result["total_seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2))
    return 0


# -- statistics and CPU time -----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100]); NaN for an empty list.

    Why nearest rank: the result is always a value that was measured (no interpolation between
    samples), and the scripts' percentiles are comparable with one another."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def distribution(values: Iterable[float], *, digits: int, quantiles: Sequence[int] = (50, 90, 99),
                 count: bool = False) -> dict[str, float | int | None]:
    """``{"count"?, "p50", "p90", "p99", "max", "mean"}`` of ``values`` rounded to ``digits``
    (None for each statistic if there are no values); which percentiles and whether the count is
    included are the caller's choice.

    Why the options: each script's JSON has its own long-standing set of keys, and the numbers
    behind them must be computed the same way everywhere."""
    ordered = sorted(values)
    result: dict[str, float | int | None] = {"count": len(ordered)} if count else {}
    for q in quantiles:
        result[f"p{q}"] = round(percentile(ordered, q), digits) if ordered else None
    result["max"] = round(ordered[-1], digits) if ordered else None
    result["mean"] = round(sum(ordered) / len(ordered), digits) if ordered else None
    return result


def ns_to_ms(values_ns: Iterable[int]) -> list[float]:
    """Durations in nanoseconds (``perf_counter_ns`` differences) as milliseconds.

    Why: the MQTT benchmarks time with integer nanoseconds (no float rounding while measuring)
    but report milliseconds."""
    return [v / 1e6 for v in values_ns]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable.

    Why: how much CPU a region process (or a broker) spends on a workload is part of what is
    measured, and it runs in another process than the benchmark."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def self_cpu_seconds() -> float:
    """User + system CPU time of this process.

    Why: the load generator shares the machine's CPUs with what it measures; its own CPU use
    shows how much of the machine it took."""
    times = os.times()
    return times.user + times.system


# -- the throw-away fleet --------------------------------------------------------------------


def geofleet(*args: str, timeout: float = 60.0) -> str:
    """Run the geofleet CLI (``python -m geofleet ARGS``) and return its stdout; RuntimeError
    with its stderr if it fails.

    Why the CLI: devices are created the way an operator creates them, with the interpreter of
    the benchmark (so the same geofleet install)."""
    result = subprocess.run([sys.executable, "-m", "geofleet", *args], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"geofleet {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def start_fleet(root: Path, regions: Sequence[str], settings: dict[str, object] | None = None) -> LocalFleet:
    """``LocalFleet.start`` (init on free loopback ports + ``geofleet up``) in ``root``, with an
    empty ``devices`` directory for device certificates (see ``devices_dir``); ``settings`` are
    further fleet.json fields (``trusted_proxies``, ``residency``...), if any.

    Why the wrapper: if the fleet does not start, the error carries the end of ``up.log`` and of
    each region's ``node.log``, because the directory holding them is deleted afterwards."""
    try:
        fleet = LocalFleet.start(root, tuple(regions), settings=settings)
    except GeofleetError as error:
        logs = [root / "up.log", *(root / "regions" / r / "node.log" for r in regions)]
        tails = "".join(f"\n--- {p.name} ({p.parent.name}):\n{p.read_text(errors='replace')[-1500:]}"
                        for p in logs if p.exists())
        raise RuntimeError(f"{error.message}{tails}") from None
    devices_dir(fleet).mkdir(exist_ok=True)
    return fleet


@contextmanager
def throwaway_fleet(regions: Sequence[str], log: Callable[[str], None],
                    settings: dict[str, object] | None = None) -> Iterator[LocalFleet]:
    """A fleet of ``regions`` (``start_fleet``, with fleet.json ``settings`` if any) in a
    temporary directory; on exit the fleet is stopped (if the caller has not stopped it already)
    and the directory deleted.

    Why: a benchmark must leave no region processes and no certificates behind, however it ends
    (an error, Ctrl-C, SIGTERM via ``begin``)."""
    with tempfile.TemporaryDirectory(prefix="geofleet-bench-") as tmp:
        log(f"starting a {len(regions)}-region fleet in {tmp}")
        fleet = start_fleet(Path(tmp) / "fleet", regions, settings)
        try:
            yield fleet
        finally:
            fleet.stop()


def devices_dir(fleet: LocalFleet) -> Path:
    """Where the benchmark's device certificates and keys go (``<fleet>/devices``).

    Why inside the fleet directory: it is deleted with the fleet, and ``root-ca.pem`` sits next to
    the device files there, which is what ``device_client`` expects."""
    return fleet.data.root / "devices"


def region_int(fleet: LocalFleet, region: str, key: str) -> int:
    """An integer (port, pid) from the fleet's cluster.json for one region.

    Why: cluster.json values are untyped; this is the one place that turns them into ints."""
    return int(str(fleet.region(region)[key]))


def create_devices(fleet: LocalFleet, names: Sequence[str], region: str, policy: str | None = None,
                   workers: int = 4) -> dict[str, str]:
    """Create devices in ``region`` with ``geofleet device create`` (a few at a time), their files
    in ``devices_dir``; ``policy`` instead of the default device policy if given. Returns thing
    name -> certificate id.

    Why in parallel: each creation is a CLI process and an admin round trip; set-up time is not
    what is measured."""
    def create(name: str) -> tuple[str, str]:
        extra = ("--policy", policy) if policy is not None else ()
        out = geofleet("device", "create", name, "--data-dir", str(fleet.data.root), "--region", region,
                       "--out", str(devices_dir(fleet)), *extra, "--json")
        return name, str(json.loads(out)["certificateId"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(create, names))


# -- MQTT devices ----------------------------------------------------------------------------


def device_client(name: str, certs: Path) -> mqtt.Client:
    """A paho (MQTT 3.1.1, callback API 2) client for one device: client id = thing name, clean
    session, mutual TLS with ``certs/<name>.cert.pem`` and ``.key.pem`` against ``root-ca.pem``.

    Why: this is how a device connects to a region node; every benchmark must pay the same TLS
    costs."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
    client.tls_set(ca_certs=str(certs / "root-ca.pem"), certfile=str(certs / f"{name}.cert.pem"),
                   keyfile=str(certs / f"{name}.key.pem"))
    return client


class Session:
    """One device's paho client with its own network thread (``loop_start``), connected with
    TCP_NODELAY. Records connect and subscribe failures and unexpected disconnects.

    Why a shared class: the throughput benchmarks need the same connect / subscribe handshake and
    the same socket settings, so that their figures compare."""

    def __init__(self, name: str, certs: Path) -> None:
        self.name = name
        self.port: int | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connect_failure: str | None = None
        self.subscribe_failure: str | None = None
        self.disconnects: list[str] = []
        self.closing = False
        self.client = device_client(name, certs)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def start(self, port: int) -> None:
        """Connect to ``HOST:port`` and start the network thread (without waiting for CONNACK).

        Why TCP_NODELAY: paho leaves Nagle on, so a PUBACK followed by the next small write would
        wait for a delayed ACK, and the benchmark would measure the kernel's timer."""
        self.port = port
        self.client.connect(HOST, port, keepalive=60)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> None:
        """RuntimeError unless the broker accepted the connection within ``timeout`` s.

        Why: a measurement on a session that never connected would only count losses."""
        if not self.connected.wait(max(0.0, timeout)) or self.connect_failure:
            raise RuntimeError(f"{self.name} could not connect to port {self.port}: "
                               f"{self.connect_failure or 'timeout'}")

    def wait_subscribed(self, timeout: float) -> None:
        """RuntimeError unless the broker granted the subscription within ``timeout`` s.

        Why: a message published before the subscription holds would be counted as lost."""
        if not self.subscribed.wait(max(0.0, timeout)) or self.subscribe_failure:
            raise RuntimeError(f"{self.name} was not subscribed: {self.subscribe_failure or 'timeout'}")

    def stop(self) -> None:
        """Disconnect and stop the network thread; disconnects from now on are expected.

        Why the flag: only disconnects the benchmark did not ask for are reported."""
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        """paho's CONNACK callback. Why: ``wait_connected`` needs the outcome, not only the event."""
        if reason.is_failure:
            self.connect_failure = str(reason)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        """paho's SUBACK callback. Why: a refused topic filter comes back as a failure reason code,
        not as an error, and must fail the run."""
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self.subscribe_failure = ", ".join(failed)
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        """paho's disconnect callback. Why: a session the broker dropped mid-run skews the figures,
        so the result lists it (``disconnects``)."""
        if not self.closing:
            self.disconnects.append(str(reason))


# -- a minimal HTTP/1.1 client -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One HTTP response as ``Http1.exchange`` read it: status, headers (names in lower case; the
    last of repeated ones) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


HTTP1_ERRORS = (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
"""What ``Http1`` raises when a request fails (the connection is closed then; the next request
opens a new one). ``ssl.SSLError`` is an OSError."""


class Http1:
    """One HTTP/1.1 keep-alive connection over TLS (verified with ``tls``) that sends a request
    and reads the response (Content-Length bodies only, which is what a region sends). Optionally
    with the admin token (``token``) and from a given loopback source address
    (``local_address``, e.g. 127.0.0.2, which a fleet may trust as a proxy).

    Why not httpx: its clients cost 2-5 ms of CPU per request on a 2-core machine (more than a
    region spends on a simple write), against about 0.2 ms here; a load generator sharing the
    cores with the regions must take as little of them as it can."""

    def __init__(self, url: str, tls: ssl.SSLContext, token: str | None = None,
                 local_address: str | None = None) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.tls = tls
        self.local_address = local_address
        auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
        self.headers = f"Host: {host_port}\r\n{auth}Content-Type: application/json\r\n"
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> None:
        """Open the connection (TLS handshake) unless it is open.

        Why separate: a benchmark opens its connections before its clock starts."""
        if self.streams is None:
            local = (self.local_address, 0) if self.local_address is not None else None
            self.streams = await asyncio.open_connection(self.host, self.port, ssl=self.tls,
                                                         server_hostname=self.host.strip("[]"), local_addr=local)

    async def exchange(self, method: str, path: str, body: bytes = b"", headers: str = "") -> HttpAnswer:
        """Send one request (``headers``: further header lines, each ending in CRLF) and return
        the whole answer; one of ``HTTP1_ERRORS`` if it failed."""
        await self.connect()
        assert self.streams is not None
        reader, writer = self.streams
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\n{self.headers}{headers}Content-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if "content-length" not in fields:
                raise ValueError("a response without Content-Length")
            content = await reader.readexactly(int(fields["content-length"]))
            return HttpAnswer(status, fields, content)
        except HTTP1_ERRORS:
            self.close()
            raise

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        """Send one request and return the response's status; one of ``HTTP1_ERRORS`` if it failed."""
        return (await self.exchange(method, path, body)).status

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None
