"""Hardening of what a region keeps on disk and of its process: one process per region, private
files, enrollment keys sealed at rest, root CA keys under a strong passphrase envelope, and a peer
port that believes a request's region only when its certificate says so."""

from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geofleet.client import AdminClient
from geofleet.cluster import spawn_region, wait_ready
from geofleet.config import DataDir, default_config
from geofleet.domain.changelog import truncation_point
from geofleet.domain.hlc import HLC
from geofleet.domain.records import Kind, Record
from geofleet.pki.ca import load_key
from geofleet.pki.fleet import initialize
from geofleet.store.sealing import Sealer, SealError
from geofleet.store.sqlite import SqliteStore
from tests.helpers import Device, geofleet, wait_for
from tests.test_bad_peer import FAKE, REAL, THING, FakePeer, link_error, untouched
from tests.test_bad_peer import real_region as _real_region

A, B, C = "us-east-1", "eu-west-1", "ap-southeast-1"
real_region = _real_region  # the fixture: one real region whose only peer is a fake


@pytest.fixture
def one_region(tmp_path: Path) -> Iterator[tuple[DataDir, subprocess.Popen[bytes]]]:
    """A three-region fleet of which only A runs (a real process)."""
    data = DataDir(tmp_path / "fleet")
    initialize(data, default_config(free_ports=True, regions=(A, B, C)))
    process = spawn_region(data, A)
    try:
        wait_ready(data, A, process)
        yield data, process
    finally:
        process.terminate()
        process.wait(30)


# -- item 11: a second instance of a running region --------------------------------------------

def test_a_second_instance_of_a_running_region_refuses_and_changes_nothing(
        one_region: tuple[DataDir, subprocess.Popen[bytes]]) -> None:
    data, first = one_region
    paths = data.region(A)
    out = data.root / "devices"
    geofleet("device", "create", "sensor-1", "--data-dir", str(data.root), "--region", A, "--out", str(out))
    device = Device("sensor-1", data.config().region(A).mqtt_port, out / "root-ca.pem", out / "sensor-1.cert.pem",
                    out / "sensor-1.key.pem").connect()

    def connected() -> bool:
        with AdminClient(data, A) as api:
            return bool(api.call("GET", "/v1/presence/sensor-1")["connected"])
    try:
        wait_for(connected, 10, "sensor-1 present in A")
        probe_before = (paths.root / "probe.pem").read_bytes()
        second = subprocess.run([sys.executable, "-m", "geofleet", "region", "run", A, "--data-dir", str(data.root)],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert second.returncode != 0
        assert second.stderr.strip() == f"geofleet: region {A} is already running (pid {first.pid})", second.stderr
        assert (paths.root / "probe.pem").read_bytes() == probe_before, "the second instance replaced the probe"
        assert connected(), "the second instance ended the running region's sessions"
        with AdminClient(data, A) as api:
            assert api.call("GET", "/health")["checks"]["broker"]["ok"]
    finally:
        device.close()


@pytest.mark.e2e
def test_the_lock_dies_with_the_process(tmp_path: Path) -> None:
    """A SIGKILLed region leaves no stale lock: it starts again at once."""
    data = DataDir(tmp_path / "fleet")
    initialize(data, default_config(free_ports=True, regions=(A,)))
    first = spawn_region(data, A)
    wait_ready(data, A, first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    again = spawn_region(data, A)
    try:
        wait_ready(data, A, again)
    finally:
        again.terminate()
        assert again.wait(30) == 0


# -- item 13: peer identity is the certificate's ----------------------------------------------

def test_a_peer_certificate_cannot_act_as_another_region(one_region: tuple[DataDir, subprocess.Popen[bytes]]) -> None:
    data, _ = one_region
    b = data.region(B)
    tls = ssl.create_default_context(cafile=str(data.peer_ca))
    tls.load_cert_chain(str(b.peer_cert), str(b.peer_key))
    url = data.config().region(A).peer_url
    with httpx.Client(verify=tls, timeout=10) as http:
        for path in ("/v1/changes", "/v1/digest", "/v1/health", "/v1/bucket/3"):
            refused = http.get(f"{url}{path}", params={"peer": C, "after": 5})
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["message"] == \
                f"this connection's peer certificate is {B!r}'s; it may not act as {C!r}"
        assert http.post(f"{url}/v1/guard/release", params={"peer": C},
                         json={"deviceId": "d", "fingerprint": "f"}).status_code == 403
        assert http.get(f"{url}/v1/changes", params={"peer": B, "after": 0}).status_code == 200
    with AdminClient(data, A) as api:
        assert C not in api.call("GET", "/replication/status")["acknowledged"], "C's position moved"


# -- item 5: private files and sealed enrollment keys -------------------------------------------

def _loose(root: Path) -> list[str]:
    """Everything under ``root`` that another local user could read or list."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o700 if path.is_dir() else 0o600
        if mode != wanted:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


@pytest.mark.e2e
def test_every_file_is_0600_and_every_dir_0700_after_init_and_after_a_region_ran(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    old = os.umask(0o022)  # an ordinary login umask: the modes must not depend on the caller's
    try:
        geofleet("init", "--data-dir", str(root), "--free-ports", "--insecure-unencrypted-root")
    finally:
        os.umask(old)
    assert _loose(root) == []
    data = DataDir(root)
    process = spawn_region(data, A)
    try:
        wait_ready(data, A, process)
        with AdminClient(data, A) as api:
            key = api.call("POST", "/enrollment-groups/factory-7", json={})["key"]
            api.call("POST", "/enrollments/device-7", json={})
        assert (data.region(A).root / "store.db-wal").exists()
        assert _loose(root) == []
        stored = b"".join(p.read_bytes() for p in data.region(A).root.glob("store.db*"))
        assert key.encode() not in stored, "the enrollment group key is in the store in clear"
        assert b"sealed:v1:" in stored
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert _loose(root) == []


def _group(key: str) -> Record:
    return Record(Kind.ENROLLMENT_GROUP, "g1", {"name": "g1", "key": key, "policyName": "p"}, HLC(1), "r1")


def test_the_store_seals_enrollment_keys_and_opens_them_for_its_readers(tmp_path: Path) -> None:
    secret = "c2VjcmV0LWtleS1vZi10aGUtZ3JvdXAtMDEyMzQ1Njc4OQ=="
    store = SqliteStore(tmp_path / "s.db", Sealer(b"fleet secret one"))
    store.put(_group(secret))
    store.park(Record(Kind.ENROLLMENT, "d1", {"name": "d1", "key": secret, "policyName": "p"}, HLC(2), "r2"),
               [(Kind.POLICY, "p")])
    assert store.get(Kind.ENROLLMENT_GROUP, "g1") == _group(secret)
    assert store.changes(0)[0].body == _group(secret).body  # what replication ships: the key, over mTLS
    assert store.unpark(Kind.POLICY, "p")[0].body == {"name": "d1", "key": secret, "policyName": "p"}
    store.close()
    assert not any(secret.encode() in p.read_bytes() for p in tmp_path.glob("s.db*"))
    with pytest.raises(SealError, match="another fleet secret"):
        SqliteStore(tmp_path / "s.db", Sealer(b"fleet secret two")).get(Kind.ENROLLMENT_GROUP, "g1")


def test_a_store_from_before_sealing_still_reads_and_seals_on_the_next_write(tmp_path: Path) -> None:
    secret = "b2xkLWNsZWFyLWtleQ=="
    SqliteStore(tmp_path / "s.db").put(_group(secret))
    sealed = SqliteStore(tmp_path / "s.db", Sealer(b"fleet secret"))
    assert sealed.get(Kind.ENROLLMENT_GROUP, "g1") == _group(secret)
    sealed.put(Record(Kind.ENROLLMENT_GROUP, "g1", {"name": "g1", "key": secret, "policyName": "q"}, HLC(3), "r1"))
    row = sealed._db.execute("SELECT body FROM records WHERE key = 'g1'").fetchone()[0]
    assert secret not in row
    assert "sealed:v1:" in row


# -- item 17: the root CA key -------------------------------------------------------------------

@pytest.mark.e2e
def test_init_refuses_an_unencrypted_root_unless_asked_and_encrypts_with_600k_rounds(tmp_path: Path) -> None:
    refused = geofleet("init", "--data-dir", str(tmp_path / "a"), check=False)
    assert refused.returncode == 2
    assert "needs a passphrase" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "a" / "fleet.json").exists()
    env = {**os.environ, "GEOFLEET_ROOT_PASSPHRASE": "correct horse battery"}
    done = subprocess.run([sys.executable, "-m", "geofleet", "init", "--data-dir", str(tmp_path / "b")],
                          capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    data = DataDir(tmp_path / "b")
    for pem_file in (data.root_key, data.peer_ca_key):
        pem = pem_file.read_bytes()
        parsed = subprocess.run(["openssl", "asn1parse", "-in", str(pem_file)], capture_output=True, text=True,
                                check=True).stdout
        assert "PBES2" in parsed
        assert "PBKDF2" in parsed
        assert "hmacWithSHA256" in parsed
        assert "aes-256-cbc" in parsed
        assert ":0927C0" in parsed  # 600,000 iterations (cryptography's default envelope: 2,048)
        load_key(pem, b"correct horse battery")
        checked = subprocess.run(["openssl", "pkey", "-in", str(pem_file), "-passin", "pass:correct horse battery",
                                  "-noout"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_a_server_with_another_regions_peer_certificate_is_not_believed(real_region: DataDir) -> None:
    """The other direction: the server at eu-west-1's peer port shows us-east-1's peer certificate
    (valid, of the peer CA, and for the same host names): its batch is refused."""
    mine = real_region.region(REAL)
    with FakePeer(real_region, mine.peer_cert, mine.peer_key) as peer:
        peer.answer = {"region": FAKE, "head": 1, "changes": [THING]}
        wait_for(lambda: f"presented {REAL!r}'s peer certificate, not {FAKE!r}'s" in link_error(real_region), 15,
                 "the link to refuse the impostor")
    assert untouched(real_region)


# -- item 9c at the store level -----------------------------------------------------------------

def test_a_truncated_log_keeps_its_head_and_says_where_it_starts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    for i in range(1, 6):
        store.put(Record(Kind.THING, f"t{i}", {"thingName": f"t{i}"}, HLC(1000 * i), "r1"))
    assert (store.head(), store.log_start()) == (5, 0)
    assert store.log_expired_through(HLC(3500)) == 3
    assert store.truncate_log(3) == 3
    assert (store.head(), store.log_start(), [c.seq for c in store.changes(0)]) == (5, 3, [4, 5])
    store.truncate_log(5)
    assert (store.head(), store.log_start(), store.changes(0)) == (5, 5, [])
    store.put(Record(Kind.THING, "t6", {"thingName": "t6"}, HLC(6000), "r1"))
    store.close()
    reopened = SqliteStore(tmp_path / "s.db")
    assert (reopened.head(), reopened.log_start(), [c.seq for c in reopened.changes(0)]) == (6, 5, [6])


def test_the_truncation_point_waits_for_every_peer_unless_the_retention_expired() -> None:
    assert truncation_point(10, {"b": 7, "c": 4}, ["b", "c"], 0) == 4
    assert truncation_point(10, {"b": 7}, ["b", "c"], 0) == 0, "a peer not heard from has acknowledged nothing"
    assert truncation_point(10, {"b": 7}, ["b", "c"], 6) == 6
    assert truncation_point(10, {"b": 12, "c": 11}, ["b", "c"], 0) == 10, "never past the head"
    assert truncation_point(10, {}, [], 0) == 10, "a region without peers keeps nothing"
