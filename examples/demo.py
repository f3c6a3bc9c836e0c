#!/usr/bin/env python3
"""The geofleet demo: a three-region fleet on this machine that acts as one: devices speaking the
AWS IoT device protocol over mutual TLS to their home regions, shadows driven from a back end
that talks to one region only, and a revocation in one region that cuts a live session in
another. Run with ``make demo``; everything happens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.config import DataDir

DEVICES = {"thermostat-ny": "us-east-1", "pump-dublin": "eu-west-1", "meter-singapore": "ap-southeast-1"}


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "geofleet", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"geofleet {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


class Device:
    """A device as AWS IoT device code would write it: paho-mqtt, its own key and certificate."""

    def __init__(self, name: str, port: int, creds: Path) -> None:
        self.name, self.events, self.closed = name, [], threading.Event()
        self.shadow_answer = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.tls_set(ca_certs=str(creds / "root-ca.pem"), certfile=str(creds / f"{name}.cert.pem"),
                            keyfile=str(creds / f"{name}.key.pem"))
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_: self.closed.set()
        self.client.reconnect_delay_set(30, 60)
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("localhost", port)
        self.client.loop_start()
        connected.wait(10)
        self.client.subscribe(f"$aws/things/{name}/shadow/update/#", 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/update/delta"):
            print(f"   {self.name}: delta {body['state']} -> applying and reporting", flush=True)
            self.client.publish(f"$aws/things/{self.name}/shadow/update",
                                json.dumps({"state": {"reported": body["state"]}}), 1)
        elif message.topic.endswith("/update/accepted") and "reported" in body["state"]:
            self.shadow_answer.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    root: Path = args.data_dir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    step("1+2. A fleet of three regions (a root CA, one intermediate CA per region), each its own OS process")
    with LocalFleet.start(root / "fleet") as fleet:
        for name in ("us-east-1", "eu-west-1", "ap-southeast-1"):
            region = fleet.region(name)
            print(f"   {name:15} mqtts://localhost:{region['mqtt_port']}  {region['http_url']}  pid {region['pid']}")
        run_story(fleet.data, fleet.cluster, root / "devices")
    print("\nfleet stopped cleanly" if fleet.process.returncode == 0 else f"\nfleet exited {fleet.process.returncode}")


def run_story(data: DataDir, cluster: dict[str, Any], creds: Path) -> None:
    step("3. Devices: key and CSR made locally, certificate signed by their region, default policy")
    for name, region in DEVICES.items():
        print("  ", cli("device", "create", name, "--data-dir", str(data.root), "--region", region,
                        "--out", str(creds)).strip())

    step("4. Each device connects over MQTT with mutual TLS to its region")
    devices = {name: Device(name, cluster["regions"][region]["mqtt_port"], creds) for name, region in DEVICES.items()}
    for name, region in DEVICES.items():
        print(f"   {name} connected to {region}")

    step("5. The back end, talking to us-east-1 only, sets desired state; each device hears of it at home")
    desired = {"thermostat-ny": {"target_c": 21}, "pump-dublin": {"rpm": 1200}, "meter-singapore": {"interval_s": 60}}
    with AdminClient(data, "us-east-1") as api:
        for name in DEVICES:
            api.call("POST", f"/things/{name}/shadow", json={"state": {"desired": desired[name]}})
    for name in DEVICES:
        if not devices[name].shadow_answer.wait(10):
            raise SystemExit(f"{name} did not report its state")
    rows = []
    for name in DEVICES:
        seen = {}
        for region in DEVICES.values():
            with AdminClient(data, region) as api:
                deadline = time.monotonic() + 10
                while True:  # the device reported at home; wait for that to replicate here
                    shadow = api.call("GET", f"/things/{name}/shadow")
                    if not shadow["state"].get("delta") or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            seen[region] = json.dumps(shadow["state"].get("reported"))
        rows.append((name, DEVICES[name], seen))

    step("6. A device publishing to another device's topic is disconnected (policy: own topics only)")
    rogue = devices["pump-dublin"]
    rogue.client.publish("cmd/thermostat-ny/set", b'{"target_c": 35}')
    print("   pump-dublin disconnected:", rogue.closed.wait(5))

    step("7. Revoking a certificate in us-east-1 cuts the device's live session in ap-southeast-1")
    start = time.monotonic()
    print("  ", cli("cert", "revoke", "--thing", "meter-singapore", "--data-dir", str(data.root),
                    "--region", "us-east-1").strip())
    cut = devices["meter-singapore"].closed.wait(5)
    print(f"   session closed: {cut} after {1000 * (time.monotonic() - start):.0f} ms (including the CLI start-up)")

    step("Summary: each device's reported state as every region sees it")
    regions = list(DEVICES.values())
    print(f"   {'device':16} {'home':15} " + " ".join(f"{r:20}" for r in regions))
    for name, home, seen in rows:
        print(f"   {name:16} {home:15} " + " ".join(f"{seen[r]:20}" for r in regions))
    print("\n   replication:")
    for line in cli("replication", "status", "--data-dir", str(data.root)).splitlines():
        print(f"   {line}")
    for device in devices.values():
        device.client.loop_stop()
        device.client.disconnect()


if __name__ == "__main__":
    main()
