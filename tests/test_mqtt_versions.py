"""MQTT 5 clients (AWS's current SDK samples default to it) get CONNACK 0x01, and the region
says why in its log, once per client address, so an operator can tell the user what to change."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Fleet
from tests.helpers import wait_for


def _mqtt5_connect(fleet: Fleet, name: str) -> object:
    """One MQTT 5 connect attempt with the device's own certificate; what paho reported."""
    outcome: list[object] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    files = fleet.devices_dir
    client.tls_set(ca_certs=str(files / "root-ca.pem"), certfile=str(files / f"{name}.cert.pem"),
                   keyfile=str(files / f"{name}.key.pem"))

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        outcome.append(reason)
        done.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        outcome.append(reason)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.connect("localhost", fleet.port("us-east-1"))
    client.loop_start()
    try:
        assert done.wait(10), "no answer to the MQTT 5 CONNECT"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]


def test_an_mqtt5_client_is_refused_and_the_log_says_why_once(fleet: Fleet) -> None:
    name = fleet.create_device()
    log = fleet.data.region("us-east-1").log
    before = log.read_text().count("connected with MQTT 5")
    for _ in range(2):
        reason = _mqtt5_connect(fleet, name)
        assert getattr(reason, "is_failure", True), f"an MQTT 5 session must not be accepted: {reason}"
    wait_for(lambda: "connected with MQTT 5" in log.read_text()[-20000:], 10, "the warning in node.log")
    text = log.read_text()
    assert text.count("connected with MQTT 5") == max(before, 1), "once per client address, not per attempt"
    assert "mqtt_connection_builder" in text
