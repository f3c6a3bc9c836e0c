#!/usr/bin/env python3
"""Just-in-time registration end to end: how long a device of a customer CA waits, from its
first connect (refused: registered PENDING_ACTIVATION) to its first accepted connect, and how
long its first connect in another region then takes.

How: a throw-away three-region fleet (us-east-1, eu-west-1, ap-southeast-1 on loopback) whose
fleet.json has an allow-list hook naming every benchmark device. A customer CA (EC P-256, made
here) is registered in us-east-1 with a proof of possession, and the script waits until every
region lists it. Each of ``--devices`` devices (key and certificate made before the clock
starts, CN = ``jitr-NNNN``) connects to region i mod 3 (so the guard key's owner, which depends
on the certificate id, is sometimes the region asked and sometimes a peer) with paho over
mutual TLS; the first attempt is refused, and the device then tries again every
``--retry-ms`` (a device's retry; it bounds the resolution) until the region accepts it.
``activation_ms`` is from the first attempt to the accepted CONNACK: the guard claim at the
owner, the PENDING record, its replication to the owner, the hook, the activation transaction
and its replication back. ``other_region_ms`` is one connect of the same device in the next
region right after (the activation had to replicate there too). Devices go one after another.

Prints one JSON object on stdout; progress goes to stderr. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import ssl
import threading
import time
from pathlib import Path

import common
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from geofleet.client import AdminClient
from geofleet.pki.ca import cert_pem, create_root, issue_leaf, key_pem, new_key
from geofleet.pki.files import write_private, write_public
from tests.helpers import wait_for

log = common.logger("jitr")


def attempt(name: str, certs: Path, port: int) -> bool:
    """One connect: True if accepted (then disconnected), False if refused or closed. paho's
    network loop runs in this thread, so an attempt costs its TLS handshake and CONNECT only."""
    client = common.device_client(name, certs)
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        accepted.append(not rc.is_failure)
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: answered.set()
    try:
        client.connect(common.HOST, port)
    except (ssl.SSLError, OSError):
        return False
    deadline = time.monotonic() + 5
    while not answered.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.005)  # the loop in this thread: loop_stop would wait out paho's 1 s select
    client.disconnect()
    return bool(accepted) and accepted[0]


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--devices", type=common.positive(int), default=30)
    parser.add_argument("--retry-ms", type=common.positive(int), default=20)
    args = parser.parse_args()
    began, result = common.begin("jitr", {"devices": args.devices, "retry_ms": args.retry_ms})
    names = [f"jitr-{i:04d}" for i in range(args.devices)]
    with common.throwaway_fleet(common.REGIONS, log, {"jitr": {"hook": "allow-list", "allow": names}}) as fleet:
        certs = common.devices_dir(fleet)
        shutil.copy(fleet.data.root_ca, certs / "root-ca.pem")
        ca = create_root("bench", "customer CA")
        with AdminClient(fleet.data, common.REGIONS[0]) as api:
            code = api.call("GET", "/registrationcode")["registrationCode"]
            ca_id = api.call("POST", "/cacertificate", json={
                "caCertificate": cert_pem(ca.cert).decode(),
                "verificationCertificate": cert_pem(issue_leaf(ca, new_key().public_key(), code)).decode(),
                "setAsActive": True, "allowAutoRegistration": True})["certificateId"]
        for region in common.REGIONS:
            with AdminClient(fleet.data, region) as api:
                wait_for(lambda api=api: any(c["certificateId"] == ca_id  # type: ignore[misc]
                                             for c in api.call("GET", "/cacertificates")["certificates"]),
                         30, f"the CA in {region}", interval=0.05)
        for name in names:
            key = new_key()
            write_public(certs / f"{name}.cert.pem", cert_pem(issue_leaf(ca, key.public_key(), name)))
            write_private(certs / f"{name}.key.pem", key_pem(key))
        ports = [common.region_int(fleet, r, "mqtt_port") for r in common.REGIONS]
        activation, other, refused_first = [], [], 0
        for i, name in enumerate(names):
            port, next_port = ports[i % 3], ports[(i + 1) % 3]
            started = time.perf_counter_ns()
            refused_first += not attempt(name, certs, port)
            wait_for(lambda name=name, port=port: attempt(name, certs, port),  # type: ignore[misc]
                     30, f"{name} accepted", interval=args.retry_ms / 1000)
            activation.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            wait_for(lambda name=name, port=next_port: attempt(name, certs, port),  # type: ignore[misc]
                     30, f"{name} accepted in the next region", interval=args.retry_ms / 1000)
            other.append(time.perf_counter_ns() - started)
            log(f"{name}: {activation[-1] / 1e6:.0f} ms to activation, {other[-1] / 1e6:.0f} ms in the next region")
    result["first_connect_refused"] = refused_first
    result["activation_ms"] = common.distribution(common.ns_to_ms(activation), digits=1, count=True)
    result["other_region_ms"] = common.distribution(common.ns_to_ms(other), digits=1, count=True)
    return common.finish(result, began)


if __name__ == "__main__":
    raise SystemExit(main())
