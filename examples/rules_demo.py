#!/usr/bin/env python3
"""A forwarding rule between regions: the part of the demo that shows issue 10's rules.

1. start three regions on this machine;
2. create a rule in us-east-1: ``SELECT temp, topic(2) AS device FROM 'dt/+/telemetry' WHERE
   temp > 30``, forwarded to eu-west-1 on ``hot/<device>``; rules are replicated, so every
   region lists it;
3. a device in us-east-1 publishes five readings; a back-end client in eu-west-1 receives the
   two hot ones, exactly as selected;
4. eu-west-1 is SIGKILLed; three more hot readings are acknowledged by us-east-1 meanwhile and
   wait in its outbox; eu-west-1 restarts and receives them.

Run with ``python examples/rules_demo.py`` (``make demo`` may call it); everything happens on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.config import DataDir

A, B = "us-east-1", "eu-west-1"
START = time.monotonic()
BACKEND_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
    {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": "arn:aws:iot:*:*:topicfilter/hot/*"},
    {"Effect": "Allow", "Action": ["iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/hot/*"}]})


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {text}", flush=True)


def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def subscribe(client: mqtt.Client, topic_filter: str) -> None:
    granted = threading.Event()
    client.on_subscribe = lambda *_: granted.set()
    client.subscribe(topic_filter, 1)
    if not granted.wait(10):
        raise SystemExit(f"no SUBACK for {topic_filter}")


def create_device(fleet: LocalFleet, name: str, region: str, out: Path, policy: str | None = None) -> None:
    extra = ["--policy", policy] if policy else []
    subprocess.run([sys.executable, "-m", "geofleet", "device", "create", name, "--data-dir", str(fleet.data.root),
                    "--region", region, "--out", str(out), *extra], check=True, capture_output=True)


def connect(fleet: LocalFleet, name: str, region: str, out: Path, received: list[Any] | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.tls_set(ca_certs=str(out / "root-ca.pem"), certfile=str(out / f"{name}.cert.pem"),
                   keyfile=str(out / f"{name}.key.pem"))
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    if received is not None:
        client.on_message = lambda c, u, m: received.append((m.topic, json.loads(m.payload)))
    client.connect("127.0.0.1", int(str(fleet.region(region)["mqtt_port"])))
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"{name} could not connect to {region}")
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".demo-rules"))
    args = parser.parse_args()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    say("starting three regions")
    with LocalFleet.start(args.data_dir / "fleet") as fleet:
        out = fleet.data.root / "devices"
        out.mkdir()
        data = DataDir(fleet.data.root)
        with AdminClient(data, B) as api:
            api.call("POST", "/policies/backend", json={"policyDocument": BACKEND_POLICY})
        create_device(fleet, "sensor-1", A, out)
        create_device(fleet, "backend-eu", B, out, policy="backend")
        rule = {"sql": "SELECT temp, topic(2) AS device FROM 'dt/+/telemetry' WHERE temp > 30",
                "actions": [{"forward": {"region": B, "topic": "hot/${topic(2)}", "qos": 1}}]}
        with AdminClient(data, A) as api:
            api.call("POST", "/rules/hot_to_eu", json=rule)
        say(f"rule hot_to_eu created in {A}: {rule['sql']} -> forward to {B} on hot/<device>")
        with AdminClient(data, "ap-southeast-1") as api:
            until(lambda: any(r["ruleName"] == "hot_to_eu" for r in api.call("GET", "/rules")["rules"]), 10,
                  "the rule in ap-southeast-1")
        say("the rule is replicated: ap-southeast-1 lists it too")
        received: list[Any] = []
        backend = connect(fleet, "backend-eu", B, out, received)
        subscribe(backend, "hot/#")
        sensor = connect(fleet, "sensor-1", A, out)
        for temp in (21, 31, 25, 35, 19):
            sensor.publish("dt/sensor-1/telemetry", json.dumps({"temp": temp, "unit": "C"}), 1).wait_for_publish(10)
        say(f"sensor-1 published temp 21, 31, 25, 35, 19 in {A}")
        until(lambda: len(received) >= 2, 10, "the forwarded readings")
        for topic, payload in received:
            say(f"backend-eu in {B} got {topic}: {payload}")
        backend.loop_stop()
        fleet.send_signal(B, signal.SIGKILL)
        say(f"{B} SIGKILLed")
        with AdminClient(data, A) as api:
            api.call("POST", f"/rules-outbox/forward/{B}/pause")  # until backend-eu is back (demo only)
            for temp in (40, 41, 42):
                sensor.publish("dt/sensor-1/telemetry", json.dumps({"temp": temp}), 1).wait_for_publish(10)
            say(f"three hot readings acknowledged by {A} while {B} is down; its outbox: "
                f"{api.call('GET', '/rules-outbox')['outbox']}")
            fleet.restart(B)
            say(f"{B} restarted")
            received.clear()
            backend = connect(fleet, "backend-eu", B, out, received)
            subscribe(backend, "hot/#")
            api.call("POST", f"/rules-outbox/forward/{B}/resume")
            until(lambda: len(received) >= 3, 30, "the backlog")
        for topic, payload in received:
            say(f"backend-eu in {B} got {topic}: {payload}")
        sensor.loop_stop()
        backend.loop_stop()
    say(f"fleet stopped; its files are in {args.data_dir}")


if __name__ == "__main__":
    main()
