"""The attacker review of the MQTT broker, against a real fleet, with real TLS clients: what a
device may do to another device's session, what its Last Will and retained messages may reach,
AWS IoT's size limits, malformed packets and idle connections."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from geofleet.domain.limits import MAX_PAYLOAD_BYTES
from tests.conftest import Fleet
from tests.helpers import Device, wait_for
from tests.mqtt_wire import PINGREQ, RawClient, connect_packet, publish_header, publish_packet
from tests.test_device_mqtt import monitor, shadow_topic

ACCEPTED = b"\x20\x02\x00\x00"
REFUSED = b"\x20\x02\x00\x05"
"""CONNACK, Session Present 0, 0x05 not authorized [MQTT-3.2.2-4]."""


def raw(fleet: Fleet, name: str, region: str = "us-east-1") -> RawClient:
    devices = fleet.devices_dir
    return RawClient(fleet.port(region), devices / "root-ca.pem", devices / f"{name}.cert.pem",
                     devices / f"{name}.key.pem")


@contextlib.contextmanager
def connected(device: Device) -> Iterator[Device]:
    device.connect()
    try:
        yield device
    finally:
        device.close()


def still_served(device: Device) -> None:
    """The device's connection and subscriptions work: a shadow request gets its answer."""
    answer = device.request(shadow_topic(device.client_id, "get"), {"clientToken": "alive"}, timeout=5)
    assert answer.json().get("clientToken") == "alive"
    assert not device.disconnects, "the device's connection was closed"


def disconnect_reason(watcher: Device, client_id: str) -> str:
    event = watcher.wait_message(f"$aws/events/presence/disconnected/{client_id}")
    return str(event.json()["disconnectReason"])


# -- item 0: a refused CONNECT must not act on the real device's session ------------------------

@pytest.mark.parametrize("clean", [True, False], ids=["clean-session", "persistent-session"])
def test_a_refused_connect_with_another_devices_client_id_leaves_its_session_alone(fleet: Fleet,
                                                                                    clean: bool) -> None:
    victim, attacker = fleet.create_device(), fleet.create_device()
    with connected(fleet.device(victim, clean=clean)) as device:
        device.subscribe(f"$aws/things/{victim}/shadow/get/+")
        intruder = raw(fleet, attacker)
        assert intruder.connect(connect_packet(victim, clean=clean)) == REFUSED
        assert intruder.closed_by_server(5)
        still_served(device)


def test_a_revoked_certificate_cannot_knock_another_device_offline(fleet: Fleet) -> None:
    victim, attacker = fleet.create_device(), fleet.create_device()
    with fleet.admin() as api:
        api.call("POST", f"/certificates/{fleet.cert_id(attacker)}/revoke")
    with connected(fleet.device(victim, clean=False)) as device:
        device.subscribe(f"$aws/things/{victim}/shadow/get/+")
        intruder = raw(fleet, attacker)
        assert intruder.connect(connect_packet(victim, clean=False)) == REFUSED
        still_served(device)


# -- item 1: the Last Will is authorized like a publish ------------------------------------------

def test_a_last_will_on_another_devices_topic_refuses_the_connect(fleet: Fleet) -> None:
    victim, attacker = fleet.create_device(), fleet.create_device()
    with connected(fleet.device(victim)) as device:
        device.subscribe(f"cmd/{victim}/#")
        intruder = raw(fleet, attacker)
        will = (f"cmd/{victim}/reboot", b"forged", True)
        assert intruder.connect(connect_packet(attacker, will=will)) == REFUSED
        assert intruder.closed_by_server(5)
        device.publish(f"cmd/{victim}/sentinel", b"1")
        device.wait_message(f"cmd/{victim}/sentinel")
        assert not [m for m in device.messages if m.topic == f"cmd/{victim}/reboot"]
    with connected(fleet.device(victim)) as again:  # nothing was retained either
        again.subscribe(f"cmd/{victim}/#")
        again.publish(f"cmd/{victim}/sentinel", b"2")
        again.wait_message(f"cmd/{victim}/sentinel")
        assert not [m for m in again.messages if m.topic == f"cmd/{victim}/reboot"]


def test_a_retained_last_will_needs_iot_retain_publish(fleet: Fleet) -> None:
    name = fleet.create_device()
    will = (shadow_topic(name, "update"), b'{"state":{"reported":{"online":false}}}', True)
    assert raw(fleet, name).connect(connect_packet(name, will=will)) == REFUSED


def test_a_last_will_is_routed_like_a_live_publish(fleet: Fleet) -> None:
    name = fleet.create_device()
    client = raw(fleet, name)
    will = (shadow_topic(name, "update"), b'{"state":{"reported":{"online":false}}}', False)
    assert client.connect(connect_packet(name, will=will)) == ACCEPTED
    client.close()

    def reported() -> object:
        with fleet.admin() as api, contextlib.suppress(Exception):
            return api.call("GET", f"/things/{name}/shadow")["state"]["reported"]
        return None

    assert wait_for(reported, 10, "the Last Will to update the shadow") == {"online": False}


def test_a_retained_publish_needs_iot_retain_publish(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.client.reconnect_delay_set(60, 60)
    device.client.publish(f"dt/{name}/kept", b"1", qos=1, retain=True)  # allowed by the default policy
    watcher.wait_message(f"dt/{name}/kept")
    device.client.publish(shadow_topic(name, "update"), b'{"state":{}}', qos=0, retain=True)
    wait_for(lambda: device.disconnects, 5, "the retained shadow publish to close the connection")
    assert disconnect_reason(watcher, name) == "FORBIDDEN_ACCESS"
    device.client.loop_stop()
    watcher.close()


# -- item 2: retained messages are checked against iot:Receive -----------------------------------

def deny_receive_policy(denied_thing: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
        {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/dt/*"},
        {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/dt/*"},
        {"Effect": "Deny", "Action": "iot:Receive", "Resource": f"arn:aws:iot:*:*:topic/dt/{denied_thing}/*"},
    ]})


def test_retained_messages_obey_an_explicit_receive_deny(fleet: Fleet) -> None:
    secret, public, reader = fleet.create_device(), fleet.create_device(), fleet.create_device()
    for name in (secret, public):
        with connected(fleet.device(name)) as device:
            device.client.publish(f"dt/{name}/status", name.encode(), qos=1, retain=True).wait_for_publish(10)
    policy = f"deny-{secret}"
    with fleet.admin() as api:
        api.call("POST", f"/policies/{policy}", json={"policyDocument": deny_receive_policy(secret)})
        api.call("PUT", f"/policies/{policy}/targets/{fleet.cert_id(reader)}")
    with connected(fleet.device(reader)) as device:
        device.subscribe("dt/+/status")
        device.wait_message(f"dt/{public}/status")  # retained messages were delivered...
        with connected(fleet.device(public)) as other:  # ...and a live one after them too
            other.publish(f"dt/{public}/status", b"live")
        wait_for(lambda: [m for m in device.messages if m.payload == b"live"], 10, "the live message")
        assert not [m for m in device.messages if m.topic == f"dt/{secret}/status"]


# -- item 9: AWS IoT's limits --------------------------------------------------------------------

def test_a_payload_over_128_kb_closes_the_connection_and_is_not_routed(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.client.reconnect_delay_set(60, 60)
    device.publish(f"dt/{name}/max", b"x" * MAX_PAYLOAD_BYTES)
    assert len(watcher.wait_message(f"dt/{name}/max").payload) == MAX_PAYLOAD_BYTES
    device.client.publish(f"dt/{name}/over", b"x" * (MAX_PAYLOAD_BYTES + 1), qos=0)
    wait_for(lambda: device.disconnects, 5, "the oversized publish to close the connection")
    assert disconnect_reason(watcher, name) == "CLIENT_ERROR"
    assert not [m for m in watcher.messages if m.topic == f"dt/{name}/over"]
    device.client.loop_stop()
    watcher.close()


def test_a_ten_megabyte_packet_is_refused_before_it_is_read(fleet: Fleet) -> None:
    name = fleet.create_device()
    client = raw(fleet, name)
    assert client.connect(connect_packet(name)) == ACCEPTED
    client.send(publish_header(f"dt/{name}/huge".encode(), 10 * 1024 * 1024) + b"x" * 1024)
    assert client.closed_by_server(5), "the broker waited for the rest of a 10 MB packet"


@pytest.mark.parametrize("suffix", ["/".join("abcdefg"), "x" * 250], ids=["8-slashes", "257-bytes"])
def test_a_topic_over_the_limits_closes_the_connection(fleet: Fleet, suffix: str) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    client = raw(fleet, name)
    assert client.connect(connect_packet(name)) == ACCEPTED
    client.send(publish_packet(f"dt/{name}/{suffix}".encode(), b"1"))
    assert client.closed_by_server(5)
    assert disconnect_reason(watcher, name) == "CLIENT_ERROR"
    watcher.close()


def test_a_topic_filter_over_the_limits_is_refused(fleet: Fleet) -> None:
    name = fleet.create_device()
    with connected(fleet.device(name)) as device:
        assert device.subscribe(f"dt/{name}/" + "/".join("abcdefg")) == [0x80]
        assert device.subscribe(f"dt/{name}/" + "/".join("abcdef")) == [1]


def test_a_client_id_over_128_bytes_is_refused_as_identifier_rejected(fleet: Fleet) -> None:
    name = fleet.create_device()
    assert raw(fleet, name).connect(connect_packet("c" * 129)) == b"\x20\x02\x00\x02"


# -- item 12: a malformed PUBLISH closes the connection ------------------------------------------

@pytest.mark.parametrize("topic", [b"", b"dt/{name}/+", b"dt/{name}/#", b"dt/{name}/a\x00b"],
                         ids=["empty", "plus", "hash", "nul"])
def test_a_malformed_publish_closes_the_connection_and_presence_says_so(fleet: Fleet, topic: bytes) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    client = raw(fleet, name)
    assert client.connect(connect_packet(name)) == ACCEPTED
    watcher.wait_message(f"$aws/events/presence/connected/{name}")
    client.send(publish_packet(topic.replace(b"{name}", name.encode()), b"1"))
    client.send(PINGREQ)
    assert client.closed_by_server(5), "the session stayed up (answering pings) after a malformed PUBLISH"
    assert disconnect_reason(watcher, name) == "CLIENT_ERROR"
    watcher.close()


def test_a_second_connect_closes_the_connection(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    client = raw(fleet, name)
    assert client.connect(connect_packet(name)) == ACCEPTED
    client.send(connect_packet(name))
    assert client.closed_by_server(5)
    assert disconnect_reason(watcher, name) == "CLIENT_ERROR"
    watcher.close()


# -- item 18: idle connections -------------------------------------------------------------------

def node_log_errors(fleet: Fleet, region: str = "us-east-1") -> list[str]:
    text = (fleet.data.region(region).root / "node.log").read_text(errors="replace")
    return [line for line in text.splitlines() if " ERROR " in line]


def test_idle_connections_are_closed_quietly(fleet: Fleet) -> None:
    before = len(node_log_errors(fleet))
    name = fleet.create_device()
    for _ in range(50):  # TLS up, then gone without a CONNECT
        raw(fleet, name).close()
    for _ in range(50):  # TCP only
        socket.create_connection(("localhost", fleet.port("us-east-1")), timeout=5).close()
    silent = raw(fleet, name)  # TLS up, then nothing
    mute = socket.create_connection(("localhost", fleet.port("us-east-1")), timeout=15)  # not even TLS
    started = time.monotonic()
    assert silent.closed_by_server(15), "a connection that never sent CONNECT was kept open"
    with contextlib.suppress(ConnectionResetError):
        assert mute.recv(1) == b"", "a connection that never started TLS was kept open"
    waited = time.monotonic() - started
    assert waited < 8, f"closed only after {waited:.1f} s"
    mute.close()
    new_errors = node_log_errors(fleet)[before:]
    assert len(new_errors) < 5, "\n".join(new_errors[:5])
