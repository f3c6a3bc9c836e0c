"""A region facing a bad peer: malformed batches, batches claiming another origin, and a server
that is not a fleet region are all refused with a log line; the replica stays untouched."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from geofleet.client import AdminClient
from geofleet.cluster import spawn_region, wait_ready
from geofleet.config import DataDir, default_config
from geofleet.pki.fleet import initialize
from tests.helpers import wait_for

REAL, FAKE = "us-east-1", "eu-west-1"
THING = {"seq": 1, "hlc": "1795812994000.000001", "origin": FAKE, "kind": "thing", "key": "planted",
         "ref": "", "body": {"thingName": "planted"}}


class FakePeer:
    """A server on the fake region's peer port that answers whatever the test sets."""

    def __init__(self, data: DataDir, certfile: Path, keyfile: Path) -> None:
        self.answer: dict[str, Any] = {}
        app = FastAPI()

        @app.get("/v1/changes")
        async def changes() -> dict[str, Any]:
            return self.answer

        @app.get("/v1/digest")
        async def digest() -> dict[str, Any]:
            return {"region": FAKE, "buckets": {}}

        region = data.config().region(FAKE)
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=region.host, port=region.peer_port, log_level="warning", lifespan="off",
            ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), ssl_ca_certs=str(data.peer_ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakePeer:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the fake peer to listen")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def real_region(tmp_path: Path) -> Iterator[DataDir]:
    data = DataDir(tmp_path / "fleet")
    initialize(data, default_config(free_ports=True, regions=(REAL, FAKE)))
    process = spawn_region(data, REAL)
    try:
        wait_ready(data, REAL, process)
        yield data
    finally:
        process.terminate()
        process.wait(30)


def link_error(data: DataDir) -> str:
    with AdminClient(data, REAL) as api:
        return str(api.call("GET", "/replication/status")["links"][FAKE]["lastError"] or "")


def untouched(data: DataDir) -> bool:
    with AdminClient(data, REAL) as api:
        status = api.call("GET", "/replication/status")["links"][FAKE]
        return bool(api.call("GET", "/things")["things"] == [] and status["cursor"] == 0 and status["applied"] == 0)


@pytest.mark.parametrize(("answer", "error"), [
    ({"region": FAKE, "head": 1, "changes": [{**THING, "origin": REAL}]}, "claims origin"),
    ({"region": FAKE, "head": 1, "changes": [{**THING, "hlc": "soon"}]}, "invalid HLC"),
    ({"region": "mars-1", "head": 1, "changes": [THING]}, "does not name eu-west-1"),
    ({"region": FAKE, "head": 1, "changes": [{**THING, "kind": "certificate", "body": {"status": "ACTIVE"}}]},
     "certificate needs string fields"),
])
def test_malformed_batches_are_refused_and_nothing_is_applied(real_region: DataDir, answer: dict[str, Any],
                                                              error: str) -> None:
    paths = real_region.region(FAKE)
    with FakePeer(real_region, paths.peer_cert, paths.peer_key) as peer:
        peer.answer = answer
        wait_for(lambda: error in link_error(real_region), 15, f"the link to report {error!r}")
    assert untouched(real_region)
    log = (real_region.region(REAL).root / "node.log").read_text()
    assert f"replication {FAKE} -> {REAL}" in log
    assert error in log


def test_a_server_without_a_peer_certificate_is_not_believed(real_region: DataDir) -> None:
    paths = real_region.region(FAKE)  # the fake region's *server* certificate: fleet PKI, but not a peer
    with FakePeer(real_region, paths.server_chain, paths.server_key) as peer:
        peer.answer = {"region": FAKE, "head": 1, "changes": [THING]}
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in link_error(real_region), 15, "a TLS verification error")
    assert untouched(real_region)
