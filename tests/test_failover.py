"""Failover and the application side on a real two-region fleet: devices (the asyncio SDK over
real TLS and MQTT) survive a SIGKILLed and a SIGSTOPped region and come home; the application
finds and reaches them anywhere, and nothing they publish at QoS 1 is lost or seen twice."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from geofleet.app import DeviceOffline, EventStream, FleetApp
from geofleet.client import AdminClient, fleet_app
from geofleet.device import BlockingDevice, DeviceClient, DeviceShadow, DiskOutbox, FailoverOptions, bootstrap_async
from geofleet.domain.errors import InvalidRequest, NotFound
from geofleet.drill import wait_until
from tests.conftest import Fleet
from tests.helpers import geofleet, wait_for

A, B = "us-east-1", "eu-west-1"
T = TypeVar("T")
FAST = FailoverOptions(keepalive_s=4, min_stay_s=2.0, failback_interval_s=0.5, first_retry_spread_s=0.3,
                       backoff_base_s=0.2, connect_timeout_s=2.0)


@pytest.fixture(scope="module")
def ffleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet.start(tmp_path_factory.mktemp("failover") / "fleet", (A, B),
                        settings={"trusted_proxies": ["127.0.0.2/32"]})  # geofleet simulate's proxy
    assert isinstance(fleet, Fleet)
    yield fleet
    for region in (A, B):
        fleet.send_signal(region, signal.SIGCONT)  # never leave a frozen region behind
    fleet.stop()


def run(work: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(work(), timeout)

    return asyncio.run(bounded())


def endpoints(fleet: Fleet, *regions: str) -> list[dict[str, Any]]:
    return [{"region": r, "host": "localhost", "port": fleet.port(r)} for r in regions]


def device_client(fleet: Fleet, name: str, *regions: str, **kwargs: Any) -> DeviceClient:
    d = fleet.devices_dir
    return DeviceClient(name, str(d / f"{name}.cert.pem"), str(d / f"{name}.key.pem"), str(d / "root-ca.pem"),
                        endpoints(fleet, *regions), **kwargs)


def admitted_in(fleet: Fleet, name: str, region: str) -> bool:
    """Whether ``region`` holds what admits the device: its thing, certificate and policy."""
    with fleet.admin(region) as api:
        try:
            principals = api.call("GET", f"/things/{name}/principals")["principals"]
            return bool(principals) and bool(api.call("GET", f"/certificates/{principals[0]}/policies")["policies"])
        except NotFound:
            return False


def create_everywhere(fleet: Fleet, region: str) -> str:
    """A device created in ``region`` and replicated to both regions of the fleet."""
    name = fleet.create_device(region=region)
    for other in (A, B):
        wait_for(functools.partial(admitted_in, fleet, name, other), 10, f"{name} replicated to {other}")
    return name


def tls(fleet: Fleet) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(fleet.data.root_ca))


def concierge(fleet: Fleet, region: str, device: str) -> dict[str, Any]:
    """The concierge's answer; empty while the device has not replicated to ``region`` yet."""
    url = fleet.data.config().region(region).http_url
    response = httpx.get(f"{url}/v1/endpoints/{device}", verify=tls(fleet), timeout=5)
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_health_is_deep_and_the_concierge_lists_home_first(ffleet: Fleet) -> None:
    name = create_everywhere(ffleet, B)
    url = ffleet.data.config().region(A).http_url
    health = httpx.get(f"{url}/health", verify=tls(ffleet), timeout=5).json()
    assert health["healthy"]
    assert health["checks"]["broker"]["ok"]
    assert health["checks"]["store"]["ok"]
    wait_for(lambda: all(e["healthy"] for e in concierge(ffleet, A, name).get("endpoints", [{"healthy": False}])),
             10, "the device in A and both regions seen healthy from A")
    answer = concierge(ffleet, A, name)
    assert answer["homeRegion"] == B
    assert answer["mode"] == "active-active"
    assert [(e["region"], e["role"], e["usable"]) for e in answer["endpoints"]] == [(B, "home", True),
                                                                                   (A, "failover", True)]


def test_active_standby_offers_the_standby_only_while_the_home_is_down(ffleet: Fleet) -> None:
    name = create_everywhere(ffleet, A)
    with ffleet.admin(A) as api:
        api.call("PATCH", f"/things/{name}", json={"attributes": {"geofleet:failoverMode": "active-standby"}})
    # The standby is offered or not on B's view of A's health: wait for the mode to replicate to B
    # and for B to see A up (after a restart of A, B's view lags), then the roles must be exact.
    listed = wait_for(lambda: (c := concierge(ffleet, B, name)).get("mode") == "active-standby"
                      and any(e["region"] == A and e["healthy"] for e in c["endpoints"]) and c, 10,
                      "the mode in B and A seen healthy from B")
    assert [(e["region"], e["role"], e["usable"]) for e in listed["endpoints"]] == [(A, "home", True),
                                                                                   (B, "standby", False)]


def test_device_survives_a_killed_region_loses_nothing_and_comes_home(ffleet: Fleet) -> None:
    """Messages 6-8 are published while A is frozen (so A never routes them) and then A is
    SIGKILLed: the device must send them again through B, and the application must see every
    message exactly once; after A restarts the device goes home after its minimum stay."""
    name = create_everywhere(ffleet, A)
    received: list[int] = []
    commands: list[bytes] = []

    async def scenario() -> None:
        async with fleet_app(ffleet.data.root) as app, app.events([f"dt/{name}/#"]) as stream:
            await failover_scenario(app, stream)

    async def failover_scenario(app: FleetApp, stream: EventStream) -> None:
        async def collect() -> None:
            async for event in stream:
                received.append(int(json.loads(event.payload)["n"]))

        collector = asyncio.create_task(collect())
        device = device_client(ffleet, name, A, B, options=FAST)
        await device.subscribe(f"cmd/{name}/#", lambda _t, p: commands.append(p))
        async with device:
            assert await device.wait_connected(10) == A
            for n in range(1, 6):
                await device.publish(f"dt/{name}/t", json.dumps({"n": n}))
            await wait_until(lambda: len(received) == 5, 10, "messages 1-5 at the application")
            assert (await app.locate(name)).region == A

            ffleet.send_signal(A, signal.SIGSTOP)
            for n in range(6, 9):
                await device.publish(f"dt/{name}/t", json.dumps({"n": n}))
            ffleet.send_signal(A, signal.SIGKILL)
            # How fast it fails over is measured by bench/failover.py, not asserted on a shared CI box.
            await wait_until(lambda: device.status.region == B, 10, "the device in B")
            assert await app.send(name, f"cmd/{name}/hello", "right after failover") == B
            await wait_until(lambda: commands == [b"right after failover"], 5, "the command at the device")
            await wait_until(lambda: sorted(received) == list(range(1, 9)), 10, "6-8 resent through B")
            await eventually(lambda: located_in(app, name, B), 10, "presence moved to B")

            ffleet.restart(A, timeout=None)
            await asyncio.to_thread(ffleet.wait_ready, A)
            # A's stream carries only what A receives while it is open: 9-10 may be sent to A
            await wait_until(lambda: A in stream.regions_open, 15, "the application following A again")
            for n in range(9, 11):
                await device.publish(f"dt/{name}/t", json.dumps({"n": n}))
            await wait_until(lambda: device.status.region == A, 20, "the device back home")
            arrived_b, back_home = device.status.moves[-2], device.status.moves[-1]
            assert arrived_b.region == B
            assert back_home.reason == f"fail-back to {A}"
            assert back_home.at - arrived_b.at >= FAST.min_stay_s, "the minimum stay was respected"
            await device.flush(10)
            await wait_until(lambda: len(received) >= 10, 10, "every message at the application")
        collector.cancel()
        assert sorted(received) == list(range(1, 11)), "no QoS 1 message lost, none delivered twice"
        assert app.duplicates_dropped == 0

    run(scenario)


def presence_in(api: AdminClient, name: str, region: str) -> dict[str, Any] | None:
    """The device's presence entry as ``api``'s region sees it, once it places the device in ``region``."""
    entry = api.call("GET", f"/v1/presence/{name}")
    return dict(entry) if entry["region"] == region else None


async def located_in(app: FleetApp, name: str, region: str) -> bool:
    return (await app.locate(name)).region == region


async def eventually(probe: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """Await ``probe`` until it answers True; fail after ``within_s`` seconds."""
    try:
        async with asyncio.timeout(within_s):
            while not await probe():  # noqa: ASYNC110 - the probe asks a remote region: nothing to await
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {within_s} s waiting for {what}") from None


def test_active_standby_device_uses_the_standby_only_while_the_home_is_down(ffleet: Fleet) -> None:
    """No fail-back timer here: the device leaves the standby because the concierge reports it
    unusable once the home is healthy again (a region reported unusable is left)."""
    name = create_everywhere(ffleet, A)
    with ffleet.admin(A) as api:
        api.call("PATCH", f"/things/{name}", json={"attributes": {"geofleet:failoverMode": "active-standby"}})
    wait_for(lambda: concierge(ffleet, B, name).get("mode") == "active-standby", 10, "the mode in B")
    urls = [ffleet.data.config().region(r).http_url for r in (B, A)]
    options = FailoverOptions(keepalive_s=4, failback=False, health_interval_s=0.5, first_retry_spread_s=0.3,
                              backoff_base_s=0.2, connect_timeout_s=2.0)

    async def scenario() -> None:
        async with device_client(ffleet, name, A, B, concierge=urls, options=options) as device:
            assert await device.wait_connected(10) == A
            ffleet.send_signal(A, signal.SIGKILL)
            await wait_until(lambda: device.status.region == B, 10, "the device on the standby")
            ffleet.restart(A, timeout=None)
            await asyncio.to_thread(ffleet.wait_ready, A)
            await wait_until(lambda: device.status.region == A, 20, "the device home, the standby reported unusable")
            assert device.status.moves[-1].reason == f"{B} reported unusable"

    run(scenario)


def test_black_holed_region_is_left_after_keepalive_and_reported_unhealthy(ffleet: Fleet) -> None:
    name = create_everywhere(ffleet, B)

    async def scenario() -> None:
        device = device_client(ffleet, name, B, A, options=FAST)
        async with device:
            assert await device.wait_connected(10) == B
            await device.publish(f"dt/{name}/t", "before")
            await device.flush(5)
            ffleet.send_signal(B, signal.SIGSTOP)
            try:
                # The deadline is the behaviour: a silent region is left once keepalive expires.
                await wait_until(lambda: device.status.region == A, FAST.keepalive_s + 5, "the device in A")
                await device.publish(f"dt/{name}/t", "after")
                await device.flush(5)
                await wait_until(lambda: not concierge(ffleet, A, name)["endpoints"][0]["healthy"], 10,
                                 "B reported unhealthy by A")
            finally:
                ffleet.send_signal(B, signal.SIGCONT)
            await wait_until(lambda: device.status.region == B, 20, "the device back in B")

    run(scenario)


def test_a_device_connected_in_two_regions_keeps_only_the_newer_session(ffleet: Fleet) -> None:
    name = create_everywhere(ffleet, A)
    with ffleet.device(name, A) as first:
        first.connect()
        with ffleet.device(name, B) as second:
            second.connect()
            wait_for(lambda: first.disconnects, 10, "the older session (in A) closed")
            for region in (A, B):
                with ffleet.admin(region) as api:
                    found = wait_for(functools.partial(presence_in, api, name, B), 10, f"presence in {region}")
                    assert found["connected"]
                    assert not found["duplicates"]
            # the late disconnect of A's old session did not clear B's
            with ffleet.admin(A) as api:
                assert api.call("GET", f"/v1/presence/{name}")["region"] == B


def test_shadow_delta_set_while_the_device_was_away_arrives_after_reconnect(ffleet: Fleet) -> None:
    name = ffleet.create_device(region=A)
    deltas: list[dict[str, Any]] = []
    device = BlockingDevice(device_client(ffleet, name, A, B, options=FAST))
    try:
        assert device.start(timeout=10) == A
        shadow = device.shadow(on_delta=deltas.append)
        shadow.update(reported={"light": "off"})
        device.close()
        with ffleet.admin(B) as api:
            api.call("POST", f"/things/{name}/shadow", json={"state": {"desired": {"light": "on"}}})
        device = BlockingDevice(device_client(ffleet, name, A, B, options=FAST))
        device.start(timeout=10)
        device.shadow(on_delta=deltas.append)
        wait_for(lambda: deltas, 10, "the delta after reconnect")
        assert deltas[-1] == {"light": "on"}
    finally:
        device.close()


def test_bad_endpoint_lists_give_clear_errors_and_bounded_retries(ffleet: Fleet) -> None:
    with pytest.raises(InvalidRequest, match="endpoint list is empty"):
        device_client(ffleet, ffleet.create_device(region=A))
    name = ffleet.create_device(region=A)
    dead = [{"region": "nowhere", "host": "127.0.0.1", "port": 9}]

    async def unreachable() -> list[Any]:
        d = ffleet.devices_dir
        device = DeviceClient(name, str(d / f"{name}.cert.pem"), str(d / f"{name}.key.pem"),
                              str(d / "root-ca.pem"), dead, options=FAST)
        async with device:
            with pytest.raises(Exception, match="no endpoint accepted a connection within 3 s"):
                await device.wait_connected(3)
            return [device.status.attempts, device.status.last_error]

    attempts, error = run(unreachable)
    assert 1 <= attempts <= 15, f"{attempts} attempts in 3 s: retries must back off, not spin"
    assert "nowhere" in error


def test_locate_and_send_refuse_unknown_and_offline_devices(ffleet: Fleet) -> None:
    offline = ffleet.create_device(region=A)

    async def scenario() -> None:
        async with fleet_app(ffleet.data.root) as app:
            with pytest.raises(NotFound, match="no such device"):
                await app.locate("no-such-device")
            with pytest.raises(NotFound, match="never connected"):
                await app.locate(offline)
            with pytest.raises(NotFound):
                await app.send("no-such-device", "cmd/x/y", "hi")
            with pytest.raises(DeviceOffline, match="not connected to any region"):
                await app.send(offline, f"cmd/{offline}/y", "hi", timeout=1.0)

    run(scenario)
    result = geofleet("locate", "no-such-device", "--data-dir", str(ffleet.data.root), check=False)
    assert result.returncode == 2
    assert "no such device" in result.stderr
    url = ffleet.data.config().region(A).http_url
    bad = httpx.get(f"{url}/v1/endpoints/bad%20name", verify=tls(ffleet), timeout=5)
    assert bad.status_code == 400
    assert "message" in bad.json()
    headers = {"Authorization": f"Bearer {ffleet.data.token()}"}
    wildcard = httpx.post(f"{url}/v1/devices/{offline}/messages", params={"topic": "cmd/#"}, content=b"x",
                          headers=headers, verify=tls(ffleet), timeout=5)
    assert wildcard.status_code == 400
    assert "wildcards" in wildcard.json()["message"]


def test_cli_locate_and_send(ffleet: Fleet, tmp_path: Path) -> None:
    name = ffleet.create_device(region=B)
    with ffleet.device(name, B) as device:
        device.connect()
        device.subscribe(f"cmd/{name}/#")
        root = str(ffleet.data.root)
        located = wait_for(lambda: (r := geofleet("locate", name, "--data-dir", root, "--json", check=False))
                           .returncode == 0 and json.loads(r.stdout)["region"] == B and r, 15, "located in B")
        answer = json.loads(located.stdout)
        assert answer["connected"] is True
        connected_at = datetime.fromisoformat(answer["connectedAt"])  # ISO 8601, not an HLC stamp
        assert abs((datetime.now(UTC) - connected_at).total_seconds()) < 300
        assert answer["lastSeen"]["connectedAt"] == answer["connectedAt"]
        sent = geofleet("send", name, f"cmd/{name}/reboot", '{"now":true}', "--data-dir", root, "--json")
        assert json.loads(sent.stdout)["deliveredBy"] == B
        assert device.wait_message(f"cmd/{name}/reboot").json() == {"now": True}


def test_cli_simulate_places_devices_worldwide_and_runs_them(ffleet: Fleet) -> None:
    result = geofleet("simulate", "--devices", "6", "--duration", "1", "--interval", "0.5",
                      "--data-dir", str(ffleet.data.root), "--json", timeout=120)
    summary = json.loads(result.stdout)
    assert summary["devices"] == 6
    assert summary["countries"] == 6
    assert set(summary["homes"]) == {A, B}, "devices from the Americas and from Europe got different homes"
    assert summary["connected"] == summary["homes"]
    assert summary["published"] >= 6
    assert summary["unlocated"] == 0
    assert "warning" not in result.stderr


def test_cli_simulate_warns_when_the_fleet_cannot_locate_and_reruns_cleanly(fleet: Fleet, tmp_path: Path) -> None:
    """The default fleet does not trust 127.0.0.2 as a proxy: the simulator says so instead of
    claiming devices from many countries; a new folder gets fresh device ids (no 409 from the
    devices an earlier, deleted folder provisioned), and reusing a prefix is a clear error."""
    root = str(fleet.data.root)
    run = ["simulate", "--devices", "2", "--duration", "0.2", "--interval", "0.5", "--data-dir", root, "--json"]
    first = geofleet(*run, "--folder", str(tmp_path / "one"), timeout=120)
    summary = json.loads(first.stdout)
    assert summary["unlocated"] == 2
    assert summary["countries"] == 0
    assert "trusted_proxies" in first.stderr
    prefix = json.loads((tmp_path / "one" / "enrollment.json").read_text())["prefix"]
    second = json.loads(geofleet(*run, "--folder", str(tmp_path / "two"), timeout=120).stdout)
    assert second["published"] >= 2, "a new folder provisions new devices"
    clash = geofleet(*run, "--folder", str(tmp_path / "three"), "--prefix", prefix, check=False, timeout=120)
    assert clash.returncode == 1
    assert "already exists with another key" in clash.stderr
    assert "--prefix" in clash.stderr


@pytest.mark.e2e
def test_cli_drill_kills_a_region_and_accounts_for_every_message(tmp_path: Path) -> None:
    result = geofleet("drill", "--kill", "eu-west-1", "--devices", "9", "--data-dir", str(tmp_path / "drill"),
                      "--json", timeout=180)
    report = json.loads(result.stdout)
    assert report["affected"] >= 1
    assert report["lost"] == 0
    assert report["published"] == report["received"]
    assert report["failoverSeconds"]["max"] < 5.0
    assert report["afterFailback"] == report["homes"]


def test_app_shadow_and_lifecycle_events_from_every_region(ffleet: Fleet) -> None:
    name = create_everywhere(ffleet, B)

    async def scenario() -> None:
        async with fleet_app(ffleet.data.root) as app:
            async with app.events([f"$aws/events/presence/+/{name}"]) as stream:
                updated = await app.update_shadow(name, {"state": {"desired": {"mode": "eco"}}})
                assert updated["state"]["desired"] == {"mode": "eco"}
                assert (await app.get_shadow(name))["state"]["delta"] == {"mode": "eco"}
                for region in (A, B):
                    with ffleet.device(name, region) as device:
                        device.connect()
                seen: list[tuple[str, str]] = []
                async for event in stream:
                    seen.append((event.region, event.topic.split("/")[3]))
                    if len(seen) == 4:
                        break
            assert sorted(seen) == sorted([(A, "connected"), (A, "disconnected"), (B, "connected"),
                                           (B, "disconnected")])

    run(scenario)


def test_disk_outbox_keeps_messages_across_a_device_restart(ffleet: Fleet, tmp_path: Path) -> None:
    """Published while no region is reachable, kept in the outbox file through a restart of the
    device program, delivered once it connects."""
    name = ffleet.create_device(region=B)
    d = ffleet.devices_dir
    files = (str(d / f"{name}.cert.pem"), str(d / f"{name}.key.pem"), str(d / "root-ca.pem"))
    nowhere = [{"region": B, "host": "127.0.0.1", "port": 9}]

    async def offline() -> None:
        outbox = DiskOutbox(tmp_path / "outbox.db")
        async with DeviceClient(name, *files, nowhere, options=FAST, outbox=outbox) as device:
            for n in range(3):
                await device.publish(f"dt/{name}/t", json.dumps({"n": n}))
            assert not device.status.connected
        outbox.close()

    async def online() -> list[int]:
        got: list[int] = []
        async with fleet_app(ffleet.data.root) as app, app.events([f"dt/{name}/#"]) as stream:
            outbox = DiskOutbox(tmp_path / "outbox.db")
            assert len(outbox) == 3
            async with device_client(ffleet, name, B, options=FAST, outbox=outbox) as device:
                await device.flush(10)
            async for event in stream:
                got.append(int(json.loads(event.payload)["n"]))
                if len(got) == 3:
                    break
            outbox.close()
        return got

    run(offline)
    assert run(online) == [0, 1, 2]


def test_sdk_forms_bootstrap_async_messages_and_shadow_context(ffleet: Fleet, tmp_path: Path) -> None:
    """The SDK's asyncio forms end to end: a device provisions with ``bootstrap_async``, connects
    from its credentials, keeps its shadow in an ``async with`` block (a delta set by the
    application arrives), and reads a command from ``device.messages``."""
    common = ["--data-dir", str(ffleet.data.root), "--region", A]
    group = json.loads(geofleet("enrollment", "create", "sdk-forms", *common, "--json").stdout)
    name = ffleet.new_name("sdk")
    key = geofleet("enrollment", "device-key", "--device-id", name, "--group-key", group["key"]).stdout.strip()
    url = ffleet.data.config().region(A).http_url

    async def scenario() -> None:
        credentials = await bootstrap_async(name, key, "sdk-forms", [url], ffleet.data.root_ca, tmp_path)
        assert credentials.endpoints[0].region == credentials.home_region
        again = await bootstrap_async(name, key, "sdk-forms", [url], ffleet.data.root_ca, tmp_path)
        assert again == credentials
        assert (credentials.fresh, again.fresh) == (True, False)
        deltas: list[dict[str, Any]] = []
        async with fleet_app(ffleet.data.root) as app, \
                DeviceClient.from_credentials(credentials, options=FAST) as device:
            home = await device.wait_connected(10)
            assert device.status.connected
            assert device.status.region == home
            async with DeviceShadow(device, on_delta=deltas.append) as shadow:
                await shadow.update(reported={"light": "off"})
                await app.update_shadow(name, {"state": {"desired": {"light": "on"}}})
                await wait_until(lambda: deltas == [{"light": "on"}], 10, "the delta at the device")
            await device.subscribe(f"cmd/{name}/#")
            assert await app.send(name, f"cmd/{name}/reboot", '{"now": true}') == home
            message = await asyncio.wait_for(anext(device.messages), 10)
            assert (message.topic, message.payload) == (f"cmd/{name}/reboot", b'{"now": true}')
        assert not device.status.connected
        assert device.status.region is None

    run(scenario)

