"""Durable consumers end to end on a real three-region fleet, with real paho devices over mTLS:
messages published in every region reach the consumer; a consumer that stops and starts again
resumes from its committed offsets (duplicates only of what it had not committed); a region
SIGKILLed while its devices publish loses nothing it acknowledged; what matches no consumer is
not journaled; bad input is a clear 4xx."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from geofleet.app import Consumer, FleetApp, Message
from geofleet.client import fleet_app
from geofleet.domain.errors import InvalidRequest, NotFound, Unauthorized
from tests.conftest import REGIONS, Fleet, start_fleet
from tests.helpers import Device, geofleet, wait_for
from tests.mqtt_wire import connect_packet
from tests.test_broker_hardening import ACCEPTED, raw

A, B, C = REGIONS
T = TypeVar("T")


def run(work: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(work(), timeout)

    return asyncio.run(bounded())


def known_everywhere(fleet: Fleet, consumer: str) -> None:
    """Until every region holds the consumer record (it replicates): only then does a region
    journal for it."""
    def everywhere() -> bool:
        for region in REGIONS:
            with fleet.admin(region) as api:
                try:
                    api.call("GET", f"/v1/consumers/{consumer}")
                except NotFound:
                    return False
        return True

    wait_for(everywhere, 20, f"consumer {consumer} in every region")


def devices(fleet: Fleet) -> dict[str, Device]:
    """One connected device in each region (created there)."""
    return {region: fleet.device(fleet.create_device(region=region), region).connect() for region in REGIONS}


def usage(device: Device, n: int) -> None:
    device.publish(f"dt/{device.client_id}/usage", {"n": n})


async def take(consumer: Consumer, count: int, within_s: float = 30.0) -> list[Message]:
    """The next ``count`` messages (fails after ``within_s``)."""
    taken: list[Message] = []

    async def read() -> None:
        async for message in consumer:
            taken.append(message)
            if len(taken) == count:
                return

    try:
        await asyncio.wait_for(read(), within_s)
    except TimeoutError:
        raise AssertionError(f"only {len(taken)} of {count} messages within {within_s} s: {taken}") from None
    return taken


async def fail_at(app: FleetApp, name: str, n: int) -> None:
    """Process messages until the one numbered ``n``, and fail on it."""
    async with app.consumer(name) as consumer:
        async for message in consumer:
            if message.json()["n"] == n:
                raise RuntimeError("processing failed")


def journal_head(fleet: Fleet, region: str) -> int:
    with fleet.admin(region) as api:
        return int(api.call("GET", "/v1/journal")["head"])


def test_every_region_reaches_the_consumer_and_a_restart_resumes_from_the_committed_offsets(fleet: Fleet) -> None:
    name = fleet.new_name("billing")
    things = devices(fleet)

    async def scenario() -> None:
        async with fleet_app(fleet.data.root) as app:
            # created through the SDK; entering waits until every region answered its offset
            async with app.consumer(name, filters=["dt/+/usage"], commit_interval=3600) as consumer:
                for region in REGIONS:
                    await asyncio.to_thread(usage, things[region], 1)
                first = await take(consumer, 3)
                assert {(m.region, m.client_id) for m in first} == {(r, things[r].client_id) for r in REGIONS}
                assert all(m.json() == {"n": 1} and m.id == f"{m.region}:{m.seq}" for m in first)
            # left the block: what was processed is committed in each region, so nothing repeats
            for region in REGIONS:
                await asyncio.to_thread(usage, things[region], 2)
            async with app.consumer(name) as consumer:
                second = await take(consumer, 3)
                assert sorted((m.region, m.json()["n"]) for m in second) == [(r, 2) for r in sorted(REGIONS)]
                await consumer.commit()
                assert consumer.committed == {m.region: m.seq for m in second}
            # the application stops in the middle of a message (an exception, a crash): that
            # message was not processed, so it comes again; only the one before it is committed
            for n in (3, 4):
                await asyncio.to_thread(usage, things[A], n)
            with pytest.raises(RuntimeError, match="processing failed"):
                await fail_at(app, name, 4)
            async with app.consumer(name) as consumer:
                again = await take(consumer, 1)
                assert again[0].json() == {"n": 4}, "only the unprocessed message is delivered again"

    try:
        run(scenario)
    finally:
        for device in things.values():
            device.close()


def test_only_what_matches_a_consumer_is_journaled(fleet: Fleet) -> None:
    name = fleet.new_name("narrow")
    device_name = fleet.create_device(region=A)
    with fleet.admin(A) as api:
        api.call("PUT", f"/v1/consumers/{name}", json={"filters": [f"dt/{device_name}/kept"]})
    known_everywhere(fleet, name)
    device = fleet.device(device_name, A).connect()
    try:
        before = journal_head(fleet, A)
        device.publish(f"dt/{device_name}/ignored", {"x": 1})  # QoS 1: acknowledged, so routed, when this returns
        assert journal_head(fleet, A) == before, "a message no consumer wants is not journaled"
        device.publish(f"dt/{device_name}/kept", {"x": 2})
        assert journal_head(fleet, A) == before + 1, "journaled before the PUBACK"
        with fleet.admin(A) as api:
            page = api.call("GET", f"/v1/consumers/{name}/messages", params={"after": before, "wait": 0})
        assert [(m["topic"], m["clientId"], json.loads(m["payload"])) for m in page["messages"]] == \
            [(f"dt/{device_name}/kept", device_name, {"x": 2})]
    finally:
        device.close()
    # a Last Will is a publish of the device too: journaled when its connection drops
    client = raw(fleet, device_name, A)
    assert client.connect(connect_packet(device_name, will=(f"dt/{device_name}/kept", b"gone", False))) \
        == ACCEPTED
    client.close()
    with fleet.admin(A) as api:
        page = api.call("GET", f"/v1/consumers/{name}/messages", params={"after": before + 1, "wait": 10})
    assert [(m["topic"], m["payload"]) for m in page["messages"]] == [(f"dt/{device_name}/kept", "gone")]
    geofleet("consumer", "delete", name, "--data-dir", str(fleet.data.root), "--region", B)


def test_bad_consumers_and_reads_are_clear_errors(fleet: Fleet) -> None:
    root = str(fleet.data.root)
    with fleet.admin(A) as api:
        with pytest.raises(InvalidRequest, match="consumer name"):
            api.call("PUT", "/v1/consumers/bad%20name", json={"filters": ["a/#"]})
        with pytest.raises(InvalidRequest, match="'#' must be"):
            api.call("PUT", "/v1/consumers/ok", json={"filters": ["a/#/b"]})
        with pytest.raises(InvalidRequest, match="at most 8"):
            api.call("PUT", "/v1/consumers/ok", json={"filters": [f"t/{i}" for i in range(9)]})
        with pytest.raises(InvalidRequest, match="filters"):
            api.call("PUT", "/v1/consumers/ok", json={"filters": "a/#"})
        for path in ["/v1/consumers/nobody", "/v1/consumers/nobody/messages?wait=0",
                     f"/v1/consumers/nobody/offsets/{A}"]:
            with pytest.raises(NotFound):
                api.call("GET", path)
        api.call("PUT", "/v1/consumers/errors-test", json={"filters": ["x/#"]})
        with pytest.raises(InvalidRequest, match="kept in"):
            api.call("PUT", f"/v1/consumers/errors-test/offsets/{B}", json={"seq": 0})
        with pytest.raises(InvalidRequest, match="outside the journal"):
            api.call("PUT", f"/v1/consumers/errors-test/offsets/{A}", json={"seq": 10**12})
        for params in [{"limit": 0}, {"limit": 5000}, {"wait": 999}, {"after": -1}, {"after": 10**12}]:
            with pytest.raises(InvalidRequest):
                api.call("GET", "/v1/consumers/errors-test/messages", params={"wait": 0, **params})
        api.call("DELETE", "/v1/consumers/errors-test")
    response = httpx.get(f"{fleet.admin(A).region.http_url}/v1/consumers",
                         verify=ssl.create_default_context(cafile=str(fleet.data.root_ca)))
    assert response.status_code == 401
    with pytest.raises(Unauthorized):
        fleet.admin(A).call("GET", "/v1/consumers", headers={"Authorization": "Bearer wrong"})
    bad = geofleet("consumer", "create", "x", "--filter", "a/#/b", "--data-dir", root, "--region", A, check=False)
    assert bad.returncode == 2
    assert "'#' must be a whole level" in bad.stderr
    assert "Traceback" not in bad.stderr
    made = geofleet("consumer", "create", "cli-made", "--filter", "a/+", "--filter", "b/#", "--data-dir", root,
                    "--region", A, "--json")
    assert json.loads(made.stdout)["filters"] == ["a/+", "b/#"]
    assert "cli-made" in geofleet("consumer", "list", "--data-dir", root, "--region", A).stdout
    geofleet("consumer", "delete", "cli-made", "--data-dir", root, "--region", A)
    gone = geofleet("consumer", "delete", "cli-made", "--data-dir", root, "--region", A, check=False)
    assert gone.returncode == 2


def test_a_consumer_deleted_while_it_reads_ends_its_loop_with_not_found(fleet: Fleet) -> None:
    name = fleet.new_name("doomed")

    async def scenario() -> None:
        async with fleet_app(fleet.data.root) as app, app.consumer(name, filters=["x/#"]) as consumer:
            await app.delete_consumer(name)
            with pytest.raises(NotFound, match="was deleted"):
                await take(consumer, 1)

    run(scenario)


@pytest.mark.e2e
def test_sigkill_of_a_region_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """Devices publish to B; B is SIGKILLed in the middle; every message B acknowledged (PUBACK
    seen by the device) reaches the consumer, which follows A, B and C throughout, once B is back."""
    fleet = start_fleet(tmp_path / "data")
    name = "kill-test"
    acked: list[int] = []
    try:
        fleet.wait_healthy()
        device_name = fleet.create_device(region=B)

        def publish_then_kill() -> None:
            with fleet.device(device_name, B).connect() as device:  # closed (no reconnects left behind)
                for n in range(200):
                    info = device.client.publish(f"dt/{device_name}/usage", json.dumps({"n": n}), qos=1)
                    if n == 120:
                        os.kill(fleet.pid(B), signal.SIGKILL)
                    try:
                        info.wait_for_publish(2)
                    except (RuntimeError, ValueError):
                        break  # the connection is gone: not acknowledged
                    if not info.is_published():
                        break
                    acked.append(n)

        # The consumer runs in a thread of its own, so that this (main) thread restarts B: a
        # region started by a thread dies with that thread (PR_SET_PDEATHSIG), and asyncio's
        # worker threads end with their loop.
        received: list[Message] = []
        following, finished = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        async def follow() -> None:
            async with fleet_app(fleet.data.root) as app, app.consumer(name, filters=["dt/+/usage"]) as consumer:
                following.set()

                async def collect() -> None:
                    async for message in consumer:
                        received.append(message)

                collector = asyncio.create_task(collect())
                await asyncio.to_thread(finished.wait, 170)
                collector.cancel()

        def consumer_thread() -> None:
            try:
                run(follow, 180)
            except BaseException as exc:  # reported by the test below
                failures.append(exc)
                following.set()

        reader = threading.Thread(target=consumer_thread)
        reader.start()
        try:
            assert following.wait(60), "the consumer did not start"
            assert not failures, failures
            publish_then_kill()
            fleet.restart(B)
            wait_for(lambda: set(acked) <= {int(m.json()["n"]) for m in list(received)}, 60,
                     "every message B acknowledged at the consumer")
        finally:
            finished.set()
            reader.join(30)
        assert not failures, failures
        assert len(acked) >= 100, f"B acknowledged only {len(acked)} messages before its SIGKILL"
        assert {int(m.json()["n"]) for m in received} >= set(acked)
        assert {m.region for m in received} == {B}
        # and independently of what the consumer read before the kill: B's journal, as B holds
        # it after the restart, has every message B acknowledged
        with fleet.admin(B) as api:
            journaled: set[int] = set()
            after = 0
            while True:
                page = api.call("GET", f"/v1/consumers/{name}/messages",
                                params={"after": after, "limit": 1000, "wait": 0})
                journaled |= {int(json.loads(m["payload"])["n"]) for m in page["messages"]}
                if page["next"] == after:
                    break
                after = page["next"]
        assert journaled >= set(acked), f"B's journal lacks {sorted(set(acked) - journaled)[:10]}"
    finally:
        fleet.stop()
