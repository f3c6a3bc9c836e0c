"""Devices over real MQTT with mutual TLS against a real region node: connection rules,
policies, lifecycle events and every shadow response shape."""

from __future__ import annotations

import contextlib
import json
import time

from geofleet.domain.errors import Conflict
from tests.conftest import Fleet
from tests.helpers import Device, wait_for

MONITOR_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
        {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": ["arn:aws:iot:*:*:topicfilter/$aws/events/*",
                                                                     "arn:aws:iot:*:*:topicfilter/dt/*"]},
        {"Effect": "Allow", "Action": ["iot:Receive"], "Resource": ["arn:aws:iot:*:*:topic/$aws/events/*",
                                                                   "arn:aws:iot:*:*:topic/dt/*"]},
    ],
})


def monitor(fleet: Fleet, region: str = "us-east-1") -> Device:
    """A back-end client allowed to watch lifecycle events and telemetry, nothing else."""
    name = fleet.new_name("monitor")
    with fleet.admin(region) as api, contextlib.suppress(Conflict):  # an earlier test created it
        api.call("POST", "/policies/monitor", json={"policyDocument": MONITOR_POLICY})
    fleet.create_device(name, region)
    cert = fleet.cert_id(name, region)
    with fleet.admin(region) as api:
        api.call("PUT", f"/policies/monitor/targets/{cert}")
    client = fleet.device(name, region).connect()
    client.subscribe("$aws/events/#", "dt/#")
    return client


def shadow_topic(thing: str, op: str, name: str = "") -> str:
    base = f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")
    return f"{base}/{op}"


def test_device_connects_and_gets_presence_events(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    device = fleet.device(name).connect()
    connected = watcher.wait_message(f"$aws/events/presence/connected/{name}").json()
    assert connected["eventType"] == "connected"
    assert connected["clientId"] == name
    assert connected["principalIdentifier"] == fleet.cert_id(name)
    assert connected["ipAddress"] == "127.0.0.1"
    assert {"timestamp", "sessionIdentifier", "versionNumber"} <= connected.keys()
    device.close()
    gone = watcher.wait_message(f"$aws/events/presence/disconnected/{name}").json()
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert gone["clientInitiatedDisconnect"] is True
    assert gone["sessionIdentifier"] == connected["sessionIdentifier"]
    assert gone["versionNumber"] > connected["versionNumber"]
    watcher.close()


def test_shadow_update_get_delete_round_trip(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/#")

    update = {"state": {"desired": {"color": "red", "light": {"on": True}}}, "clientToken": "tok-1"}
    accepted = device.request(shadow_topic(name, "update"), update)
    assert accepted.topic.endswith("/update/accepted")
    body = accepted.json()
    assert body["state"] == update["state"]
    assert body["version"] == 1
    assert body["clientToken"] == "tok-1"
    assert isinstance(body["metadata"]["desired"]["light"]["on"]["timestamp"], int)

    delta = device.wait_message(shadow_topic(name, "update/delta")).json()
    assert delta["state"] == {"color": "red", "light": {"on": True}}
    assert delta["version"] == 1
    documents = device.wait_message(shadow_topic(name, "update/documents")).json()
    assert documents["previous"] is None
    assert documents["current"]["state"]["desired"]["color"] == "red"

    reported = device.request(shadow_topic(name, "update"), {"state": {"reported": {"color": "red"}}}).json()
    assert reported["version"] == 2
    got = device.request(shadow_topic(name, "get"), {"clientToken": "g"}).json()
    assert got["state"]["reported"] == {"color": "red"}
    assert got["state"]["delta"] == {"light": {"on": True}}
    assert got["version"] == 2
    assert got["clientToken"] == "g"
    assert "color" in got["metadata"]["reported"]

    deleted = device.request(shadow_topic(name, "delete"), "").json()
    assert deleted["version"] == 2
    missing = device.request(shadow_topic(name, "get"), "").json()
    assert missing["code"] == 404
    assert missing["message"] == f"No shadow exists with name: '{name}'"
    recreated = device.request(shadow_topic(name, "update"), {"state": {"reported": {"x": 1}}}).json()
    assert recreated["version"] == 3, "a re-created shadow continues the deleted one's version"
    device.close()


def test_named_shadow_and_null_removes_a_field(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/#")
    topic = shadow_topic(name, "update", "config")
    device.request(topic, {"state": {"reported": {"a": 1, "b": 2}}})
    after = device.request(topic, {"state": {"reported": {"a": None}}}).json()
    assert after["state"]["reported"] == {"a": None}
    got = device.request(shadow_topic(name, "get", "config"), "").json()
    assert got["state"]["reported"] == {"b": 2}
    device.close()


def test_shadow_rejections_use_aws_codes_and_messages(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/#")
    update = shadow_topic(name, "update")
    device.request(update, {"state": {"reported": {"v": 1}}})

    cases = [
        (b"{not json", 400, "Invalid JSON"),
        ({"nostate": 1}, 400, "Missing required node: state"),
        ({"state": 5}, 400, "State node must be an object"),
        ({"state": {"desired": [1]}}, 400, "Desired node must be an object"),
        ({"state": {"color": {}}}, 400, "State contains an invalid node: 'color'"),
        ({"state": {"reported": {"v": 2}}, "version": 99, "clientToken": "stale"}, 409, "Version conflict"),
        ({"state": {"reported": {"blob": "x" * 9000}}}, 413, "The payload exceeds the maximum size allowed"),
        ({"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}, 400,
         "JSON contains too many levels of nesting; maximum is 6"),
    ]
    for payload, code, message in cases:
        answer = device.request(update, payload)
        assert answer.topic.endswith("/update/rejected"), payload
        body = answer.json()
        assert (body["code"], body["message"]) == (code, message), payload
        assert isinstance(body["timestamp"], int)
    conflict = device.request(update, {"state": {"reported": {"v": 2}}, "version": 99, "clientToken": "stale"})
    assert conflict.json()["clientToken"] == "stale"
    current = device.request(shadow_topic(name, "get"), "").json()
    assert current["version"] == 1, "nothing rejected was applied"
    assert current["state"]["reported"] == {"v": 1}, "nothing rejected was applied"
    device.close()


def test_version_matching_update_is_accepted(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/#")
    device.request(shadow_topic(name, "update"), {"state": {"reported": {"v": 1}}})
    ok = device.request(shadow_topic(name, "update"), {"state": {"reported": {"v": 2}}, "version": 1})
    assert ok.topic.endswith("accepted")
    assert ok.json()["version"] == 2
    device.close()


def test_policy_isolates_devices(fleet: Fleet) -> None:
    alice, bob = fleet.create_device(), fleet.create_device()
    a = fleet.device(alice).connect()
    b = fleet.device(bob).connect()
    b.subscribe(f"dt/{bob}/#", f"cmd/{bob}/#")
    # Subscribing to another device's topics is refused in the SUBACK.
    assert a.subscribe(f"dt/{bob}/#") == [0x80]
    assert a.subscribe(f"$aws/things/{bob}/shadow/#") == [0x80]
    assert a.subscribe(f"dt/{alice}/#") == [1]
    # Publishing to another device's topic closes the publisher's connection, as AWS IoT does.
    a.publish(f"cmd/{bob}/reboot", b"now", qos=0)
    wait_for(lambda: a.disconnects, 5, "alice to be disconnected")
    b.publish(f"dt/{bob}/temp", b"21")
    assert b.wait_message(f"dt/{bob}/temp").payload == b"21"
    assert not any(m.topic == f"cmd/{bob}/reboot" for m in b.messages)
    a.close()
    b.close()


def test_client_id_must_be_the_thing_name(fleet: Fleet) -> None:
    name = fleet.create_device()
    impostor = fleet.device(name, client_id=f"{name}-other")
    assert not impostor.try_connect()


def test_client_without_certificate_is_refused(fleet: Fleet) -> None:
    fleet.create_device(name := fleet.new_name())
    anonymous = Device(name, fleet.port("us-east-1"), fleet.devices_dir / "root-ca.pem", None, None)
    assert not anonymous.try_connect()


def test_revocation_cuts_live_session_and_refuses_reconnect(fleet: Fleet) -> None:
    """The region closes the live session itself (AUTH_ERROR), it does not wait for the device to
    reconnect. How fast (the 1 s target) is measured by bench/replication.py's revocation phase."""
    watcher = monitor(fleet)
    name = fleet.create_device()
    device = fleet.device(name).connect()
    watcher.wait_message(f"$aws/events/presence/connected/{name}")
    with fleet.admin() as api:
        api.call("POST", f"/certificates/{fleet.cert_id(name)}/revoke")
    wait_for(lambda: device.disconnects, 10, "the revoked device's session to be closed")
    event = watcher.wait_message(f"$aws/events/presence/disconnected/{name}").json()
    assert event["disconnectReason"] == "AUTH_ERROR"
    device.client.loop_stop()
    assert not fleet.device(name).try_connect()
    watcher.close()


def test_inactive_certificate_is_refused_and_reactivation_admits(fleet: Fleet) -> None:
    name = fleet.create_device()
    cert = fleet.cert_id(name)
    with fleet.admin() as api:
        api.call("PUT", f"/certificates/{cert}/status", json={"newStatus": "INACTIVE"})
    assert not fleet.device(name).try_connect()
    with fleet.admin() as api:
        api.call("PUT", f"/certificates/{cert}/status", json={"newStatus": "ACTIVE"})
    fleet.device(name).connect().close()


def test_second_connection_with_same_client_id_closes_the_first(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    first = fleet.device(name).connect()
    first.client.reconnect_delay_set(60, 60)
    second = fleet.device(name).connect()
    wait_for(lambda: first.disconnects, 5, "the first connection to be closed")
    reasons = wait_for(lambda: [m.json()["disconnectReason"] for m in watcher.messages
                                if m.topic == f"$aws/events/presence/disconnected/{name}"], 5, "event")
    assert reasons == ["DUPLICATE_CLIENTID"]
    second.publish(f"dt/{name}/alive", b"1")
    first.client.loop_stop()
    second.close()
    watcher.close()


def test_garbage_on_shadow_topics_keeps_the_node_serving(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/#")
    for junk in (b"\xff\xfe\x00", b"[]", b"null", b"x" * 100_000, b'{"state": {"desired": null}}'):
        device.request(shadow_topic(name, "update"), junk)
    ok = device.request(shadow_topic(name, "update"), {"state": {"reported": {"fine": True}}})
    assert ok.topic.endswith("accepted")
    device.close()


def test_thing_events_are_published(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.new_name("evt")
    with fleet.admin() as api:
        api.call("POST", f"/things/{name}", json={"attributes": {"model": "m1"}})
        api.call("PATCH", f"/things/{name}", json={"attributes": {"model": "m2"}})
        api.call("DELETE", f"/things/{name}")
    created = watcher.wait_message(f"$aws/events/thing/{name}/created").json()
    assert created["operation"] == "CREATED"
    assert created["attributes"] == {"model": "m1"}
    assert created["eventType"] == "THING_EVENT"
    assert created["versionNumber"] == 1
    updated = watcher.wait_message(f"$aws/events/thing/{name}/updated").json()
    assert updated["attributes"] == {"model": "m2"}
    assert updated["versionNumber"] == 2
    deleted = watcher.wait_message(f"$aws/events/thing/{name}/deleted").json()
    assert deleted["thingName"] == name
    assert deleted["operation"] == "DELETED"
    watcher.close()


def test_persistent_session_reconnect_is_judged_by_the_new_certificate(fleet: Fleet) -> None:
    """amqtt keeps the TLS object of a persistent session's first connection; geofleet must
    judge every reconnect by the certificate presented on it."""
    from geofleet.pki.ca import key_pem, make_csr, new_key

    name = fleet.create_device()
    first = fleet.device(name, clean=False).connect()
    first.close()
    second_key = new_key()
    with fleet.admin() as api:  # a second, INACTIVE certificate attached to the same thing
        cert = api.call("POST", "/certificates/from-csr",
                        json={"certificateSigningRequest": make_csr(second_key, name).decode()})
        api.call("PUT", f"/policies/geofleet-default-device/targets/{cert['certificateId']}")
        api.call("PUT", f"/things/{name}/principals/{cert['certificateId']}")
    (fleet.devices_dir / f"{name}-2.cert.pem").write_text(cert["certificatePem"])
    (fleet.devices_dir / f"{name}-2.key.pem").write_bytes(key_pem(second_key))
    impostor = fleet.device(f"{name}-2", client_id=name, clean=False)
    assert not impostor.try_connect()
    fleet.device(name, clean=False).connect().close()


def test_silent_client_is_disconnected_after_one_and_a_half_keepalives(fleet: Fleet) -> None:
    watcher = monitor(fleet)
    name = fleet.create_device()
    silent = fleet.device(name, keepalive=1)
    silent.client.connect("localhost", silent.port, keepalive=1)
    wait_for(lambda: silent.client.loop(0.05) is not None and silent.connack, 5, "CONNACK")
    started = time.monotonic()  # from here on the client sends nothing, not even PINGREQ
    event = watcher.wait_message(f"$aws/events/presence/disconnected/{name}", timeout=10).json()
    assert event["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    # Not before the keepalive ran out (a lower bound: load can only make it later); the upper
    # bound is the wait's deadline above.
    assert time.monotonic() - started >= 1.0
    watcher.close()


def test_delivery_qos_is_the_lower_of_publish_and_subscription(fleet: Fleet) -> None:
    name = fleet.create_device()
    device = fleet.device(name).connect()
    device.subscribe(f"$aws/things/{name}/shadow/update/accepted", qos=0)
    device.subscribe(f"$aws/things/{name}/shadow/get/accepted", qos=1)
    device.subscribe(f"dt/{name}/#", qos=1)
    assert device.request(f"$aws/things/{name}/shadow/update", {"state": {"reported": {"a": 1}}},
                          ("accepted",)).qos == 0
    assert device.request(f"$aws/things/{name}/shadow/get", "", ("accepted",)).qos == 1
    device.publish(f"dt/{name}/q0", b"x", qos=0)
    assert device.wait_message(f"dt/{name}/q0").qos == 0
    device.publish(f"dt/{name}/q1", b"x", qos=1)
    assert device.wait_message(f"dt/{name}/q1").qos == 1
    device.close()
