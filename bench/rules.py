#!/usr/bin/env python3
"""The rules engine: what evaluating rules costs per message, how long a forward takes from one
region to another, and whether any forwarded message is lost when the receiving region is
SIGKILLed.

What is measured, on a throw-away two-region fleet (A = us-east-1, B = eu-west-1):

1. evaluation cost: in this process, the engine's work per message (trie lookup, JSON decode,
   ``--rules`` evaluations) against none, in microseconds; then through a node: a device in A
   publishes to ``dt/bench-pub/bench`` and a subscriber in A
   receives it. Rounds alternate (none, rules, rules, none, ...) between a node with no enabled
   rule and one with ``--rules`` enabled rules whose FROM matches the topic and whose WHERE is
   never true (so each message is parsed and evaluated by every rule, and no action runs).
   Per round: a burst of ``--burst`` QoS 1 messages (msgs/s until the subscriber has them all)
   and ``--latency-messages`` one at a time (publish -> subscriber round trip, p50/p99);
2. forward lag: a rule in A forwards ``dt/bench-pub/fwd`` to B; each message carries its send
   time; the lag is send -> a subscriber in B receives it (one clock: same machine), p50/p99
   over ``--forwards`` messages sent one after another (the next once the previous arrived)
   and over a burst of the same number;
3. loss across a SIGKILL of B: a rule in A forwards ``dt/bench-pub/loss`` to B, and a rule in B
   sends each forwarded message to a webhook in this process (the http action's outbox is
   durable, so what B acknowledged to A must reach the webhook even if B dies right after; the
   forward publishes on ``forwarded/...``, which only forwards reach: rules run in every region).
   The device publishes ``--loss-messages`` messages in three equal parts: B is SIGKILLed after
   the first part (forwards in flight), restarted after the second. Lost = published and
   acknowledged by A but never received by the webhook (must be 0); duplicates are counted.

Prints one JSON object on stdout; progress on stderr. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import common
from common import HOST, argument_parser, begin, distribution, finish, logger, not_negative, positive

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.domain.rules_sql import Message, evaluate, fields_of, parse
from geofleet.domain.topics import TopicFilterIndex
from tests.helpers import Device, wait_for

A, B = "us-east-1", "eu-west-1"
PUB = "bench-pub"
OBSERVER_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/*"}]})
log = logger("rules")


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[int]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with type(self).lock:
            type(self).received.append(int(json.loads(body)["n"]))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the region's webhook sender opens up to 16 connections at once (default backlog: 5)


def _device(fleet: LocalFleet, name: str, region: str) -> Device:
    certs = common.devices_dir(fleet)
    return Device(name, common.region_int(fleet, region, "mqtt_port"), certs / "root-ca.pem",
                  certs / f"{name}.cert.pem", certs / f"{name}.key.pem").connect()


def _admin(fleet: LocalFleet, region: str) -> AdminClient:
    return AdminClient(fleet.data, region)


def _since(device: Device, start: int, topic: str) -> list[Any]:
    return [m for m in device.messages[start:] if m.topic == topic]


def _round(pub: Device, sub: Device, topic: str, burst: int, one_by_one: int) -> tuple[float, list[float]]:
    start = len(sub.messages)
    began = time.perf_counter()
    infos = [pub.client.publish(topic, json.dumps({"temp": 20, "n": n}), 1) for n in range(burst)]
    wait_for(lambda: len(_since(sub, start, topic)) >= burst, 60, "the burst at the subscriber")
    rate = burst / (time.perf_counter() - began)
    for info in infos:
        info.wait_for_publish(10)
    rtts = []
    for n in range(one_by_one):
        start = len(sub.messages)
        sent = time.perf_counter()
        pub.client.publish(topic, json.dumps({"temp": 20, "n": n}), 1)
        wait_for(lambda since=start: _since(sub, since, topic), 10, "one message at the subscriber",  # type: ignore[misc]
                 interval=0.0002)
        rtts.append((time.perf_counter() - sent) * 1000)
    return rate, rtts


def evaluation_in_process(rules: int, messages: int = 20_000) -> dict[str, Any]:
    """The engine's own work per message, without the broker around it (steady even on a busy
    machine): the topic-trie lookup, one JSON decode and every matching rule's evaluation, for
    ``rules`` rules whose FROM matches and WHERE is false, versus the lookup alone (no rule)."""
    statements = [parse(f"SELECT temp, topic(2) AS device FROM 'dt/+/bench' WHERE temp > 1000 AND n = {i}")
                  for i in range(rules)]
    index = TopicFilterIndex()
    index.add("dt/+/bench")
    message = Message(f"dt/{PUB}/bench", json.dumps({"temp": 20, "n": 1, "unit": "C"}).encode(), PUB, "c" * 64, 0)

    def per_message_us(active: list[Any]) -> float:
        began = time.perf_counter()
        for _ in range(messages):
            if index.match(message.topic) and active:
                fields = fields_of(message.payload)
                for statement in active:
                    evaluate(statement, message, fields)
        return (time.perf_counter() - began) / messages * 1e6

    runs = {"none": [], "rules": []}  # type: dict[str, list[float]]
    for _ in range(5):
        runs["none"].append(per_message_us([]))
        runs["rules"].append(per_message_us(statements))
    return {mode: round(statistics.median(values), 2) for mode, values in runs.items()}


def evaluation_cost(fleet: LocalFleet, pub: Device, sub: Device, rules: int, rounds: int, burst: int,
                    one_by_one: int) -> dict[str, Any]:
    topic = f"dt/{PUB}/bench"
    with _admin(fleet, A) as api:
        for i in range(rules):
            api.call("POST", f"/rules/cost_{i}", json={
                "sql": f"SELECT temp, topic(2) AS device FROM 'dt/+/bench' WHERE temp > 1000 AND n = {i}",
                "actions": [{"republish": {"topic": f"never/{i}"}}], "ruleDisabled": True})
    sub.subscribe(topic)
    figures: dict[str, dict[str, list[float]]] = {"none": {"rate": [], "rtt": []}, "rules": {"rate": [], "rtt": []}}
    order = [("none", "rules"), ("rules", "none")]
    for r in range(rounds):
        for mode in order[r % 2]:
            with _admin(fleet, A) as api:
                for i in range(rules):
                    api.call("POST", f"/rules/cost_{i}/{'enable' if mode == 'rules' else 'disable'}")
            _round(pub, sub, topic, 50, 0)  # warm-up, and the rule set recompiled
            rate, rtts = _round(pub, sub, topic, burst, one_by_one)
            figures[mode]["rate"].append(rate)
            figures[mode]["rtt"] += rtts
            log(f"round {r + 1} {mode}: {rate:.0f} msgs/s, rtt p50 {statistics.median(rtts):.2f} ms")
    with _admin(fleet, A) as api:
        for i in range(rules):
            api.call("DELETE", f"/rules/cost_{i}")
    result: dict[str, Any] = {mode: {"msgs_per_s_median": round(statistics.median(f["rate"]), 1),
                                     "rtt_ms": distribution(f["rtt"], digits=3, quantiles=(50, 99), count=True)}
                              for mode, f in figures.items()}
    none, with_rules = result["none"]["msgs_per_s_median"], result["rules"]["msgs_per_s_median"]
    result["rules"]["count"] = rules
    result["throughput_change"] = round(with_rules / none - 1, 3) if none else None
    return result


def forward_lag(fleet: LocalFleet, pub: Device, watcher: Device, count: int) -> dict[str, Any]:
    topic = f"dt/{PUB}/fwd"
    with _admin(fleet, A) as api:
        api.call("POST", "/rules/bench_forward", json={"sql": "SELECT * FROM 'dt/+/fwd'",
                                                       "actions": [{"forward": {"region": B, "qos": 1}}]})
    watcher.subscribe(topic)
    pub.publish(topic, {"sent": time.time_ns(), "warm": True})
    wait_for(lambda: any(m.topic == topic for m in watcher.messages), 30, "the first forward in B")

    received_at: dict[int, int] = {}
    original = watcher.client.on_message

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.topic == topic:
            received_at[json.loads(message.payload)["n"]] = time.time_ns()
        if original is not None:
            original(client, userdata, message)

    watcher.client.on_message = on_message
    sent_at: dict[int, int] = {}
    for n in range(count):
        sent_at[n] = time.time_ns()
        pub.client.publish(topic, json.dumps({"n": n}), 1)
        wait_for(lambda wanted=n: wanted in received_at, 30, "a forward in B", interval=0.0002)  # type: ignore[misc]
    sequential = [(received_at[n] - sent_at[n]) / 1e6 for n in range(count)]
    received_at.clear()
    for n in range(count, 2 * count):
        sent_at[n] = time.time_ns()
        pub.client.publish(topic, json.dumps({"n": n}), 1)
    wait_for(lambda: len(received_at) >= count, 60, "the burst of forwards in B")
    burst = [(received_at[n] - sent_at[n]) / 1e6 for n in range(count, 2 * count)]
    watcher.client.on_message = original
    return {"one_at_a_time_ms": distribution(sequential, digits=2, quantiles=(50, 99), count=True),
            "burst_ms": distribution(burst, digits=2, quantiles=(50, 99), count=True)}


def loss_across_sigkill(fleet: LocalFleet, pub: Device, messages: int) -> dict[str, Any]:
    _Webhook.received = []
    server = _Server((HOST, 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with _admin(fleet, A) as api:
            api.call("POST", "/rules/bench_loss_out", json={
                "sql": "SELECT * FROM 'dt/+/loss'",
                "actions": [{"forward": {"region": B, "topic": "forwarded/${topic(2)}/loss", "qos": 1}}]})
        with _admin(fleet, B) as api:
            api.call("POST", "/rules/bench_loss_in", json={
                "sql": "SELECT n FROM 'forwarded/+/loss'",  # rules run in every region: only forwards match
                "actions": [{"http": {"url": f"http://{HOST}:{server.server_address[1]}/loss"}}]})
        topic = f"dt/{PUB}/loss"
        third = messages // 3
        acknowledged = 0
        killed_at = restarted_at = 0.0
        for n in range(3 * third):
            if n == third:
                fleet.send_signal(B, signal.SIGKILL)
                killed_at = time.monotonic()
                log(f"SIGKILLed {B} after {n} messages")
            if n == 2 * third:
                fleet.restart(B)
                restarted_at = time.monotonic()
                log(f"restarted {B} after {n} messages ({restarted_at - killed_at:.1f} s down)")
            pub.publish(topic, {"n": n})  # returns once A has PUBACKed it
            acknowledged += 1
        wait_for(lambda: len(set(_Webhook.received)) >= acknowledged, 120, "every message at the webhook", 0.05)
        drained = time.monotonic()
        received = list(_Webhook.received)
        return {"published_and_acknowledged": acknowledged, "received": len(set(received)),
                "lost": acknowledged - len(set(received)), "duplicates": len(received) - len(set(received)),
                "seconds_down": round(restarted_at - killed_at, 1),
                "seconds_from_restart_to_all_received": round(drained - restarted_at, 2)}
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--rules", type=positive(int), default=10)
    parser.add_argument("--rounds", type=positive(int), default=4)
    parser.add_argument("--burst", type=positive(int), default=1000)
    parser.add_argument("--latency-messages", type=not_negative(int), default=200)
    parser.add_argument("--forwards", type=positive(int), default=300)
    parser.add_argument("--loss-messages", type=positive(int), default=300)
    args = parser.parse_args()
    began, result = begin("rules", vars(args))
    with common.throwaway_fleet((A, B, "ap-southeast-1"), log) as fleet:
        common.create_devices(fleet, [PUB], A)
        with _admin(fleet, A) as api:
            api.call("POST", "/policies/observer", json={"policyDocument": OBSERVER_POLICY})
        with _admin(fleet, B) as api:
            wait_for(lambda: any(p["policyName"] == "observer" for p in api.call("GET", "/policies")["policies"]),
                     10, "the policy in B")
        common.create_devices(fleet, ["bench-sub-a"], A, policy="observer")
        common.create_devices(fleet, ["bench-sub-b"], B, policy="observer")
        pub, sub_a, sub_b = _device(fleet, PUB, A), _device(fleet, "bench-sub-a", A), _device(fleet, "bench-sub-b", B)
        try:
            log("evaluation cost")
            result["evaluation_in_process_us_per_message"] = evaluation_in_process(args.rules)
            result["evaluation"] = evaluation_cost(fleet, pub, sub_a, args.rules, args.rounds, args.burst,
                                                   args.latency_messages)
            log("forward lag")
            result["forward_lag"] = forward_lag(fleet, pub, sub_b, args.forwards)
            sub_b.close()
            log("loss across a SIGKILL of the receiving region")
            result["sigkill_of_receiver"] = loss_across_sigkill(fleet, pub, args.loss_messages)
        finally:
            pub.close()
            sub_a.close()
    return finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
