#!/usr/bin/env python3
"""Device-to-device MQTT throughput through a geofleet region node versus a bare amqtt broker.

What is measured: messages per second delivered from one publishing device to one subscribing
device, and the per-message latency (publish call to delivery callback), through

- ``node``: a geofleet region node (amqtt 0.12.1 plus mutual TLS, per-connection identity,
  policy checks on every publish, subscribe and delivery, presence events), and
- ``bare``: a plain ``amqtt.broker.Broker`` in its own process, with a TLS listener using the
  region's server certificate and key, verifying client certificates against the same trust
  bundle (amqtt's CERT_OPTIONAL, and the clients do send one) and anonymous auth allowed,

so both paths pay the same TLS costs and the difference is geofleet's own work. The overhead
is ``1 - node_rate / bare_rate``.

How: the script creates a throw-away one-region fleet (``geofleet.cluster.LocalFleet``:
``geofleet up`` on free loopback ports), a publisher device ``bench-pub`` (default device
policy: it may publish to ``dt/bench-pub/*``) and a subscriber device ``bench-sub`` whose
policy (created over the admin HTTP API) lets it subscribe to and receive ``dt/*``. For each
QoS (0 and 1) and each broker, the subscriber subscribes to ``dt/bench-pub/bench`` at that QoS
and the publisher sends messages, each carrying its sequence number and a send timestamp:

1. throughput: ``--rounds`` batches of ``--messages`` messages per broker, alternating between
   the brokers (bare, node, node, bare, ...) so that background load on the machine hits both
   alike; each batch is preceded by a 200-message warm-up and keeps at most ``--window``
   messages published but not yet delivered (``--window 0``: no limit, the publisher queues
   everything at once). The reported rate is the median over the rounds; latency percentiles
   are over all messages of all rounds. Under this saturating load the latency is mostly
   queueing (about window / rate);
2. unloaded latency: ``--latency-messages`` messages one at a time (the next is published when
   the previous one has arrived): the latency of the broker path itself.

Lost messages (not delivered within ``--drain`` seconds of the last publish) and duplicates
are counted. The CPU time of the broker process per delivered message is reported too (from
/proc, at clock-tick resolution). Both clients run in this process (paho-mqtt network
threads) and share the machine's CPUs with the broker under test.

Prints one JSON object on stdout; progress goes to stderr. Everything stays on 127.0.0.1 and
the fleet and the bare broker are stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import paho.mqtt.client as mqtt

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet

REGION = common.REGIONS[0]
PUBLISHER = "bench-pub"
SUBSCRIBER = "bench-sub"
SUBSCRIBER_POLICY = "bench-dt-reader"
TOPIC = f"dt/{PUBLISHER}/bench"
HEADER = struct.Struct("!QQ")  # sequence number, send time (perf_counter_ns)
WARMUP_MESSAGES = 200

BARE_BROKER = """
import asyncio, json, signal, sys
from amqtt.broker import Broker

async def main(config):
    broker = Broker(config)
    await broker.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()

asyncio.run(main(json.loads(sys.argv[1])))
"""


log = common.logger("broker_overhead")


# -- the two brokers -------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now (for the bare broker; the fleet picks its own)."""
    with socket.socket() as s:
        s.bind((common.HOST, 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_identities(fleet: LocalFleet) -> None:
    """The publisher with the default device policy; the subscriber with a policy that lets it
    subscribe to and receive all device telemetry (``dt/*``)."""
    reader = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/dt/*"},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/dt/*"},
        ],
    }
    with AdminClient(fleet.data, REGION) as api:
        api.call("POST", f"/policies/{SUBSCRIBER_POLICY}", json={"policyDocument": json.dumps(reader)})
    common.create_devices(fleet, [PUBLISHER], REGION)
    # device create attaches the given policy to the new certificate (PUT /policies/P/targets/CERT)
    common.create_devices(fleet, [SUBSCRIBER], REGION, policy=SUBSCRIBER_POLICY)


def start_bare_broker(fleet: LocalFleet, workdir: Path, timeout: float = 30.0
                      ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    region = fleet.data.region(REGION)
    config = {
        "listeners": {"default": {
            "type": "tcp", "bind": f"{common.HOST}:{port}", "ssl": True,
            "certfile": str(region.server_chain), "keyfile": str(region.server_key),
            "cafile": str(fleet.data.trust_bundle),
        }},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    with open(workdir / "bare-broker.log", "wb") as broker_log:
        process = subprocess.Popen([sys.executable, "-c", BARE_BROKER, json.dumps(config)], stdout=subprocess.PIPE,
                                   stderr=broker_log, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready or process.stdout.readline().strip() != b"ready":
        stop_process(process)
        raise RuntimeError(f"the bare amqtt broker did not start: "
                           f"{(workdir / 'bare-broker.log').read_text(errors='replace')[-2000:]}")
    return process, port


# -- measuring -------------------------------------------------------------------------------


def latency_summary(latencies_ns: list[int]) -> dict[str, float | int | None]:
    """This script's latency figures: p50, p99, max and mean, in ms to 0.001."""
    return common.distribution(common.ns_to_ms(latencies_ns), digits=3, quantiles=(50, 99))


class Client(common.Session):
    """A ``Session`` with paho's QoS 1 in-flight limit set, connected once constructed."""

    def __init__(self, name: str, port: int, certs: Path, inflight: int) -> None:
        super().__init__(name, certs)
        self.client.max_inflight_messages_set(inflight)
        self.start(port)
        try:
            self.wait_connected(15)
        except RuntimeError:
            self.stop()
            raise

    def subscribe(self, topic: str, qos: int) -> None:
        self.client.subscribe(topic, qos)
        self.wait_subscribed(15)


@dataclass
class Run:
    """Deliveries of one batch of messages, shared by the publisher and the subscriber thread."""

    first_seq: int
    count: int
    window: threading.Semaphore | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: set[int] = field(default_factory=set)
    latencies_ns: list[int] = field(default_factory=list)
    duplicates: int = 0
    foreign: int = 0
    last_receive_ns: int = 0
    complete: threading.Event = field(default_factory=threading.Event)

    def deliver(self, payload: bytes | bytearray) -> None:
        now = time.perf_counter_ns()
        seq, sent = HEADER.unpack_from(payload)
        with self.lock:
            if not self.first_seq <= seq < self.first_seq + self.count:
                self.foreign += 1
                return
            if seq in self.received:
                self.duplicates += 1
                return
            self.received.add(seq)
            self.latencies_ns.append(now - sent)
            self.last_receive_ns = now
            if len(self.received) == self.count:
                self.complete.set()
        if self.window is not None:
            self.window.release()


class Pair:
    """The publisher and the subscriber, connected to one broker."""

    def __init__(self, port: int, certs: Path, qos: int, inflight: int, payload_bytes: int) -> None:
        self.qos = qos
        self.padding = b"x" * max(0, payload_bytes - HEADER.size)
        self.run: Run | None = None
        self.next_seq = 0
        self.subscriber = Client(SUBSCRIBER, port, certs, inflight)
        try:
            self.subscriber.client.on_message = self._on_message
            self.subscriber.subscribe(TOPIC, qos)
            self.publisher = Client(PUBLISHER, port, certs, inflight)
        except BaseException:
            self.subscriber.stop()
            raise

    def close(self) -> None:
        self.publisher.stop()
        self.subscriber.stop()

    def disconnects(self) -> list[str]:
        return [f"{c.name}: {r}" for c in (self.subscriber, self.publisher) for r in c.disconnects]

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        run = self.run
        if run is not None:
            run.deliver(message.payload)

    def send(self, count: int, window: int, drain: float) -> tuple[Run, int, int]:
        """Publish ``count`` messages with at most ``window`` undelivered (0: no limit); return
        the run, the time of the first publish and of the last (perf_counter_ns)."""
        run = Run(self.next_seq, count, threading.Semaphore(window) if window > 0 else None)
        self.next_seq += count
        self.run = run
        first_ns = time.perf_counter_ns()
        stalled_since: float | None = None
        seq = run.first_seq
        while seq < run.first_seq + count:
            if run.window is not None and not run.window.acquire(timeout=0.1):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > drain:
                    log(f"  no delivery for {drain:g} s with {window} messages outstanding: giving up")
                    break
                continue
            stalled_since = None
            payload = HEADER.pack(seq, time.perf_counter_ns()) + self.padding
            self.publisher.client.publish(TOPIC, payload, self.qos)
            seq += 1
        last_ns = time.perf_counter_ns()
        run.complete.wait(drain)
        self.run = None
        return run, first_ns, last_ns


def throughput(pair: Pair, broker_pid: int, messages: int, window: int, drain: float) -> dict[str, Any]:
    """One saturating batch of ``messages`` (after a warm-up): its rate, latencies and broker CPU."""
    pair.send(min(WARMUP_MESSAGES, messages), window, drain)
    cpu_before = common.process_cpu_seconds(broker_pid)
    run, first_ns, last_ns = pair.send(messages, window, drain)
    cpu_after = common.process_cpu_seconds(broker_pid)
    received = len(run.received)
    elapsed_s = ((run.last_receive_ns or last_ns) - first_ns) / 1e9
    return {
        "received": received,
        "duplicates": run.duplicates,
        "msgs_per_s": received / elapsed_s if elapsed_s > 0 else 0.0,
        "publish_per_s": messages / ((last_ns - first_ns) / 1e9) if last_ns > first_ns else 0.0,
        "latencies_ns": run.latencies_ns,
        "cpu_s": cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None,
    }


def summarize(rounds: list[dict[str, Any]], messages: int) -> dict[str, Any]:
    """Median rate over the rounds; latency percentiles over the messages of all rounds."""
    received = sum(r["received"] for r in rounds)
    cpu = [r["cpu_s"] for r in rounds]
    return {
        "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in rounds), 1),
        "rounds_msgs_per_s": [round(r["msgs_per_s"], 1) for r in rounds],
        "rounds_publish_per_s": [round(r["publish_per_s"], 1) for r in rounds],
        "messages": messages * len(rounds),
        "received": received,
        "lost": messages * len(rounds) - received,
        "duplicates": sum(r["duplicates"] for r in rounds),
        "latency_ms": latency_summary([v for r in rounds for v in r["latencies_ns"]]),
        "broker_cpu_us_per_msg": round(1e6 * sum(cpu) / received, 1)
        if received and all(c is not None for c in cpu) else None,
    }


def unloaded_latency(pair: Pair, messages: int, drain: float) -> dict[str, Any]:
    run, _, _ = pair.send(messages, 1, drain)
    return {**latency_summary(run.latencies_ns), "messages": messages, "lost": messages - len(run.received)}


def compare(node: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    node_rate, bare_rate = node["msgs_per_s"], bare["msgs_per_s"]
    if not node_rate or not bare_rate:
        return {"node_over_bare": None, "overhead_percent": None}
    return {"node_over_bare": round(node_rate / bare_rate, 3),
            "overhead_percent": round(100 * (1 - node_rate / bare_rate), 1)}


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--messages", type=common.positive(int), default=5000,
                        help="messages per broker and QoS (default 5000)")
    parser.add_argument("--rounds", type=common.positive(int), default=5,
                        help="batches per broker and QoS, alternating brokers; the median rate is reported (default 5)")
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1], help="QoS levels (default 0 1)")
    parser.add_argument("--window", type=common.not_negative(int), default=100,
                        help="most messages published but not yet delivered; 0 for no limit (default 100)")
    parser.add_argument("--inflight", type=common.not_negative(int), default=20,
                        help="paho's QoS 1 in-flight limit for both clients (default 20, paho's default)")
    parser.add_argument("--latency-messages", type=common.not_negative(int), default=300,
                        help="messages sent one at a time for the unloaded latency; 0 skips it (default 300)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="payload size, at least 16 (default 64)")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="seconds to wait for deliveries before counting messages lost (default 10)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, result = common.begin("broker_overhead", {
        "messages": args.messages, "rounds": args.rounds, "qos": args.qos, "window": args.window,
        "paho_inflight": args.inflight, "latency_messages": args.latency_messages,
        "payload_bytes": args.payload_bytes, "warmup_messages": min(WARMUP_MESSAGES, args.messages),
        "region": REGION, "topic": TOPIC})
    result["results"] = {}
    disconnects: list[str] = []
    with common.throwaway_fleet((REGION,), log) as fleet:
        bare: subprocess.Popen[bytes] | None = None
        try:
            log("creating the publisher and subscriber identities")
            create_identities(fleet)
            log("starting the bare amqtt broker")
            bare, bare_port = start_bare_broker(fleet, fleet.data.root)
            node = (common.region_int(fleet, REGION, "mqtt_port"), common.region_int(fleet, REGION, "pid"))
            brokers = {"bare": (bare_port, bare.pid), "node": node}
            for qos in args.qos:
                pairs: dict[str, Pair] = {}
                try:
                    for name, (port, _) in brokers.items():
                        pairs[name] = Pair(port, common.devices_dir(fleet), qos, args.inflight, args.payload_bytes)
                    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in brokers}
                    for i in range(args.rounds):
                        order = list(brokers) if i % 2 == 0 else list(reversed(brokers))
                        for name in order:
                            one = throughput(pairs[name], brokers[name][1], args.messages, args.window, args.drain)
                            rounds[name].append(one)
                            log(f"QoS {qos} round {i + 1}/{args.rounds} {name}: {one['msgs_per_s']:.0f} msgs/s, "
                                f"{args.messages - one['received']} lost")
                    section: dict[str, Any] = {name: summarize(rounds[name], args.messages) for name in brokers}
                    if args.latency_messages:
                        for name in brokers:
                            section[name]["unloaded_latency_ms"] = unloaded_latency(
                                pairs[name], args.latency_messages, args.drain)
                finally:
                    for name, pair in pairs.items():
                        pair.close()
                        disconnects += [f"{name} qos{qos} {d}" for d in pair.disconnects()]
                section.update(compare(section["node"], section["bare"]))
                log(f"QoS {qos}: {json.dumps(section)}")
                result["results"][f"qos{qos}"] = section
            result["unexpected_disconnects"] = disconnects
        finally:
            if bare is not None:
                stop_process(bare)
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
