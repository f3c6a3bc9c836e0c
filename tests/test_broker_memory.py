"""What a closed connection leaves behind, measured in-process on a real broker with real TLS
clients: it must be freed by reference counting alone (a reference cycle makes every closed
connection, TLS state included, wait for the cyclic collector, whose full passes paused the
region's loop for 70-140 ms), and the region's policy-decision cache must stay bounded."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from geofleet.broker.amqtt_broker import EmbeddedBroker
from geofleet.broker.base import Connection
from geofleet.config import default_config
from geofleet.domain.hlc import Clock
from geofleet.domain.horizon import DEFAULT_GRACE_S, TombstoneHorizon
from geofleet.domain.jitr import DEFAULT_RETRY_S
from geofleet.domain.json_types import Json
from geofleet.domain.lru import BoundedCache
from geofleet.domain.policy import Action
from geofleet.pki.ca import cert_pem, create_root, issue_leaf, key_pem, new_key
from geofleet.provisioning.jitr import JustInTime
from geofleet.region.gate import RegionGate
from geofleet.region.health import ProbeIdentity
from geofleet.services.guard import guard_action
from geofleet.services.presence import PresenceDirectory
from geofleet.services.registry import Registry
from geofleet.services.residency import Residency
from geofleet.services.rules.actions import builtin_kinds
from geofleet.services.rules.engine import RulesEngine
from geofleet.services.shadows import ShadowService
from geofleet.store.rules_sqlite import RulesStore
from geofleet.store.sqlite import SqliteStore
from tests.helpers import Device, wait_for
from tests.mqtt_wire import RawClient, connect_packet


class OpenGate:
    """A Gate that admits every client TLS let through and allows everything: the broker's own
    behaviour is under test here, not the region's policy."""

    def __init__(self) -> None:
        self.ended = 0

    def admit(self, client_id: str, certificate_der: bytes | None, ip: str) -> Connection | None:
        return Connection(client_id, str(uuid.uuid4()), "cert", client_id, ip, 0)

    def authorize(self, connection: Connection, action: Action, topic: str) -> bool:
        return True

    async def connected(self, connection: Connection) -> None:
        return None

    async def disconnected(self, connection: Connection) -> None:
        self.ended += 1

    async def message(self, connection: Connection, topic: str, payload: bytes) -> None:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_pki(root_dir: Path) -> dict[str, Path]:
    root = create_root("memory-test")
    server_key, client_key = new_key(), new_key()
    server = issue_leaf(root, server_key.public_key(), "localhost", server_names=("localhost", "127.0.0.1"),
                        client=False)
    client = issue_leaf(root, client_key.public_key(), "device")
    files = {"ca": root_dir / "ca.pem", "server": root_dir / "server.pem", "server_key": root_dir / "server.key",
             "cert": root_dir / "device.pem", "key": root_dir / "device.key"}
    files["ca"].write_bytes(cert_pem(root.cert))
    files["server"].write_bytes(cert_pem(server))
    files["server_key"].write_bytes(key_pem(server_key))
    files["cert"].write_bytes(cert_pem(client))
    files["key"].write_bytes(key_pem(client_key))
    return files


class RunningBroker:
    """An EmbeddedBroker on its own event loop thread."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.gate = OpenGate()
        self.port = _free_port()
        self.broker = EmbeddedBroker("127.0.0.1", self.port, files["server"], files["server_key"], files["ca"])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(self.gate), self.loop).result(20)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[RunningBroker, dict[str, Path]]]:
    files = _write_pki(tmp_path)
    running = RunningBroker(files)
    yield running, files
    running.stop()


def _alive(kind: type) -> int:
    """Instances of ``kind`` still alive (gc.get_objects lists them without collecting)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_closed_connections_are_freed_without_the_cycle_collector(broker: tuple[RunningBroker, dict[str, Path]]) \
        -> None:
    running, files = broker
    cycles = 30
    gc.collect()
    baseline_handlers, baseline_tls = _alive(BrokerProtocolHandler), _alive(ssl.SSLObject)
    gc.disable()
    try:
        for i in range(cycles):
            if i % 2:  # a clean MQTT DISCONNECT
                device = Device(f"device-{i}", running.port, files["ca"], files["cert"], files["key"]).connect()
                device.publish("dt/x", b"1")
                device.close()
            else:  # a device that vanishes: TCP reset, no DISCONNECT
                client = RawClient(running.port, files["ca"], files["cert"], files["key"])
                assert client.connect(connect_packet(f"device-{i}")) == b"\x20\x02\x00\x00"
                client.reset()
            wait_for(lambda n=i + 1: running.gate.ended >= n, 10, "the broker to see the disconnect")  # type: ignore[misc]
        # amqtt's session monitor drops a disconnected clean session within a second; after
        # that, nothing but a reference cycle can keep a handler or its TLS object alive
        wait_for(lambda: _alive(BrokerProtocolHandler) - baseline_handlers <= 1, 10,
                 f"the handlers of {cycles} closed connections to be freed by reference counting")
        assert _alive(ssl.SSLObject) - baseline_tls <= 1, "TLS objects of closed connections are still alive"
    finally:
        gc.enable()


@pytest.mark.e2e
def test_the_policy_decision_cache_is_bounded(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))
    clock = Clock()
    root = create_root("cache-test")
    registry = Registry(store, clock, "r1", "000000000000", root)

    async def publish(topic: str, payload: bytes, qos: int = 1) -> None:
        return None

    shadows = ShadowService(store, clock, "r1", publish, TombstoneHorizon(DEFAULT_GRACE_S))
    files = _write_pki(tmp_path)
    broker = EmbeddedBroker("127.0.0.1", _free_port(), files["server"], files["server_key"], files["ca"])
    presence = PresenceDirectory(store, registry.ledger, clock, "r1", broker)
    probe = ProbeIdentity("probe-cert", "probe", "$geofleet/probe/r1")
    residency = Residency(store, registry.ledger, "r1")
    rules = RulesEngine(registry.ledger, RulesStore(":memory:"), broker, builtin_kinds(frozenset({"r1"}), residency),
                        "r1", residency)

    async def guard(_key: str, action: str, body: Json) -> Json:  # the region owns every key here
        return guard_action(store, action, body)

    jitr = JustInTime(default_config(), "r1", registry, guard, publish, broker.trust, None, DEFAULT_RETRY_S)
    gate = RegionGate(registry, shadows, presence, broker, [], [], probe, "r1", "000000000000",
                      decision_cache_entries=1000, customer_cas=jitr, rules=rules,
                      residency=Residency(store, registry.ledger, "r1"))
    connection = Connection("device", "s", "cert", "device", "127.0.0.1", 0)
    for n in range(5000):  # a device publishing to a new topic each time
        gate.authorize(connection, Action.PUBLISH, f"dt/device/{n}")
        assert gate.cached_decisions <= 1000
    assert gate.cached_decisions == 1000


def test_the_bounded_cache_keeps_the_most_recently_used() -> None:
    cache: BoundedCache[str, bool] = BoundedCache(2)
    cache.put("a", True)
    cache.put("b", False)
    assert cache.get("a") is True  # "a" is now the most recent; "b" goes first
    cache.put("c", True)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (True, None, True)
    assert len(cache) == 2
    with pytest.raises(ValueError, match="at least one"):
        BoundedCache(0)
