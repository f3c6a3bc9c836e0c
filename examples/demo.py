#!/usr/bin/env python3
"""The geofleet demo: a three-region fleet on this machine, devices speaking the AWS IoT device
protocol over mutual TLS, shadows driven from the back end, and a revocation that cuts a live
session. Run with ``make demo``; everything happens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from geofleet.client import AdminClient
from geofleet.config import DataDir

DEVICES = {"thermostat-ny": "us-east-1", "pump-dublin": "eu-west-1", "meter-singapore": "ap-southeast-1"}


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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

    step("1. A fleet of three regions: a root CA, one intermediate CA per region")
    ports = free_ports(6)
    config = {"fleet": "demo", "regions": [
        {"name": name, "mqtt_port": ports[2 * i], "http_port": ports[2 * i + 1]}
        for i, name in enumerate(["us-east-1", "eu-west-1", "ap-southeast-1"])]}
    (root / "config.json").write_text(json.dumps(config))
    data_dir = root / "fleet"
    print("  ", cli("init", "--data-dir", str(data_dir), "--config", str(root / "config.json")).strip())

    step("2. geofleet up: every region its own OS process")
    fleet = subprocess.Popen([sys.executable, "-m", "geofleet", "up", "--data-dir", str(data_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = DataDir(data_dir)
    try:
        deadline = time.monotonic() + 60
        while not data.cluster_file.exists():
            if fleet.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the fleet did not start; see .demo/fleet/regions/*/node.log")
            time.sleep(0.1)
        cluster = json.loads(data.cluster_file.read_text())
        for name, region in cluster["regions"].items():
            print(f"   {name:15} mqtts://localhost:{region['mqtt_port']}  {region['http_url']}  pid {region['pid']}")
        run_story(data, cluster, root / "devices")
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(30)
        print("\nfleet stopped cleanly" if fleet.returncode == 0 else f"\nfleet exited {fleet.returncode}")


def run_story(data: DataDir, cluster: dict[str, Any], creds: Path) -> None:
    step("3. Devices: key and CSR made locally, certificate signed by their region, default policy")
    for name, region in DEVICES.items():
        print("  ", cli("device", "create", name, "--data-dir", str(data.root), "--region", region,
                        "--out", str(creds)).strip())

    step("4. Each device connects over MQTT with mutual TLS to its region")
    devices = {name: Device(name, cluster["regions"][region]["mqtt_port"], creds) for name, region in DEVICES.items()}
    for name, region in DEVICES.items():
        print(f"   {name} connected to {region}")

    step("5. The back end sets desired state over HTTPS; devices get /update/delta and report")
    desired = {"thermostat-ny": {"target_c": 21}, "pump-dublin": {"rpm": 1200}, "meter-singapore": {"interval_s": 60}}
    rows = []
    for name, region in DEVICES.items():
        with AdminClient(data, region) as api:
            api.call("POST", f"/things/{name}/shadow", json={"state": {"desired": desired[name]}})
            if not devices[name].shadow_answer.wait(10):
                raise SystemExit(f"{name} did not report its state")
            shadow = api.call("GET", f"/things/{name}/shadow")
        rows.append((name, region, shadow["version"], json.dumps(shadow["state"].get("reported")),
                     json.dumps(shadow["state"].get("delta", {}))))

    step("6. A device publishing to another device's topic is disconnected (policy: own topics only)")
    rogue = devices["pump-dublin"]
    rogue.client.publish("cmd/thermostat-ny/set", b'{"target_c": 35}')
    print("   pump-dublin disconnected:", rogue.closed.wait(5))

    step("7. Revoking a certificate cuts the device's live session at once")
    start = time.monotonic()
    print("  ", cli("cert", "revoke", "--thing", "meter-singapore", "--data-dir", str(data.root),
                    "--region", "ap-southeast-1").strip())
    cut = devices["meter-singapore"].closed.wait(5)
    print(f"   session closed: {cut} after {1000 * (time.monotonic() - start):.0f} ms (including the CLI start-up)")

    step("Summary")
    print(f"   {'device':16} {'region':15} {'version':8} {'reported':22} delta")
    for name, region, version, reported, delta in rows:
        print(f"   {name:16} {region:15} {version:<8} {reported:22} {delta}")
    for device in devices.values():
        device.client.loop_stop()
        device.client.disconnect()


if __name__ == "__main__":
    main()
