#!/usr/bin/env python3
"""Just-in-time registration in any region: a device whose certificate comes from the
customer's own CA registers itself on first connect, wherever it lands.

1. start three regions, with an allow-list validation hook in fleet.json (``"jitr"``);
2. the customer makes its own CA and registers it with a proof of possession (a verification
   certificate signed with the CA's key, whose subject CN is the fleet's registration code);
3. a device with a certificate from that CA connects to eu-west-1: refused (as AWS does), its
   certificate registered PENDING_ACTIVATION once for the whole fleet;
4. the hook (in the region that owns the certificate's guard key) allows it: thing, policy and
   principal are created and replicated, and the device connects in eu-west-1 and in
   ap-southeast-1 with no second registration.

Run with ``make demo`` (after the failover demo), or ``python examples/jitr_demo.py``.
"""

from __future__ import annotations

import argparse
import shutil
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet
from geofleet.pki.ca import cert_pem, certificate_id, create_root, issue_leaf, key_pem, new_key
from geofleet.pki.files import write_private, write_public

START = time.monotonic()
DEVICE = "pump-1"


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {text}", flush=True)


def connects(port: int, root_ca: Path, cert: Path, key: Path) -> bool:
    """One MQTT connect attempt over mTLS: True if the region accepted it."""
    answered = threading.Event()
    accepted: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE)
    client.tls_set(ca_certs=str(root_ca), certfile=str(cert), keyfile=str(key))

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        accepted.append(not rc.is_failure)
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: answered.set()
    try:
        client.connect("localhost", port)
    except (ssl.SSLError, OSError):
        return False
    client.loop_start()
    answered.wait(5)
    client.disconnect()
    client.loop_stop()
    return bool(accepted) and accepted[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".demo-jitr"))
    args = parser.parse_args()
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    say("starting three regions with a JITR allow-list hook")
    with LocalFleet.start(args.data_dir / "fleet", settings={"jitr": {"hook": "allow-list", "allow": [DEVICE]}}
                          ) as fleet:
        data = fleet.data
        ca = create_root("acme", "device CA")
        with AdminClient(data, "us-east-1") as api:
            code = api.call("GET", "/registrationcode")["registrationCode"]
            verification = issue_leaf(ca, new_key().public_key(), code)
            ca_id = api.call("POST", "/cacertificate", json={
                "caCertificate": cert_pem(ca.cert).decode(), "verificationCertificate": cert_pem(verification).decode(),
                "setAsActive": True, "allowAutoRegistration": True,
                "registrationConfig": {"attributes": {"maker": "acme"}}})["certificateId"]
        say(f"customer CA {ca_id[:12]}... registered in us-east-1 (proof of possession checked)")
        key = new_key()
        device_cert = issue_leaf(ca, key.public_key(), DEVICE)
        cert_file, key_file = args.data_dir / "pump-1.cert.pem", args.data_dir / "pump-1.key.pem"
        write_public(cert_file, cert_pem(device_cert))
        write_private(key_file, key_pem(key))
        cert_id = certificate_id(device_cert)
        ports = {r.name: r.mqtt_port for r in data.config().regions}
        deadline = time.monotonic() + 30
        while not connects(ports["eu-west-1"], data.root_ca, cert_file, key_file):
            say("pump-1 -> eu-west-1: refused (first connect: registered just in time, waiting for the hook)")
            if time.monotonic() > deadline:
                raise SystemExit("the device was not activated within 30 s; see the regions' node.log")
            time.sleep(0.5)  # a device's retry interval
        say("pump-1 -> eu-west-1: connected")
        with AdminClient(data, "ap-southeast-1") as api:
            thing = api.call("GET", f"/things/{DEVICE}")
            status = api.call("GET", f"/certificates/{cert_id}")["status"]
        say(f"ap-southeast-1 knows thing {DEVICE} (home {thing['attributes']['geofleet:homeRegion']}, "
            f"maker {thing['attributes']['maker']}) and its certificate is {status}")
        ok = connects(ports["ap-southeast-1"], data.root_ca, cert_file, key_file)
        say(f"pump-1 -> ap-southeast-1: {'connected, no second registration' if ok else 'REFUSED'}")
        if not ok:
            raise SystemExit("the JITR device could not connect in another region")
    print(f"\nfleet stopped; its files are in {args.data_dir}")


if __name__ == "__main__":
    main()
