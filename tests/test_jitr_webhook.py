"""The JITR webhook hook end to end: the fleet POSTs the registered event over HTTPS to a server
this test runs (its own CA, named in fleet.json's ``jitr.caFile``); a 5xx is retried with
backoff, a 2xx verdict decides, and the verdict may name the thing and add attributes."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geofleet.domain.errors import NotFound
from geofleet.pki.ca import cert_pem, certificate_id, create_root, issue_leaf, key_pem, new_key
from geofleet.pki.files import write_private, write_public
from tests.conftest import REGIONS, Fleet
from tests.helpers import wait_for
from tests.test_jitr import CustomerDevice, register_ca

A, B, C = REGIONS
pytestmark = pytest.mark.e2e
ATTEMPTS = 3


class Webhook:
    """An HTTPS server answering JITR requests: the first request of each certificate gets a
    503 (the region must retry), then ``allow`` for ``ok-*`` devices under a new name."""

    def __init__(self, root: Path) -> None:
        self.requests: list[dict[str, Any]] = []
        ca = create_root("webhook", "test server CA")
        key = new_key()
        cert = issue_leaf(ca, key.public_key(), "localhost", server_names=("localhost",), client=False)
        self.ca_file = root / "webhook-ca.pem"
        write_public(self.ca_file, cert_pem(ca.cert))
        write_public(root / "webhook.pem", cert_pem(cert))
        write_private(root / "webhook.key", key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(root / "webhook.pem", root / "webhook.key")
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = [r for r in hook.requests if r["certificateId"] == body["certificateId"]]
                hook.requests.append(body)
                if body["thingName"].startswith("late-"):  # down for a whole round of attempts
                    if len(seen) < ATTEMPTS:
                        self._answer(503, {"message": "down"})
                    else:
                        self._answer(200, {"allow": True})
                elif not seen:
                    self._answer(503, {"message": "warming up"})
                elif body["thingName"].startswith("ok-"):
                    self._answer(200, {"allow": True, "thingName": "hooked-" + body["thingName"][3:],
                                       "attributes": {"approvedBy": "webhook"}})
                else:
                    self._answer(200, {"allow": False, "reason": "unknown device"})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/jitr"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Webhook]]:
    root = tmp_path_factory.mktemp("jitr-webhook")
    hook = Webhook(root)
    try:
        running = Fleet.start(root / "fleet", tuple(REGIONS), settings={"jitr": {
            "hook": "webhook", "url": hook.url, "caFile": str(hook.ca_file), "attempts": ATTEMPTS, "retryS": 1}})
        assert isinstance(running, Fleet)
        running.wait_healthy()
        yield running, hook
        running.stop()
    finally:
        hook.close()


def test_the_webhook_is_retried_and_its_verdict_names_the_thing(webhook_fleet: tuple[Fleet, Webhook]) -> None:
    fleet, hook = webhook_fleet
    ca = create_root("acme", "webhook CA")
    register_ca(fleet, ca, B)
    wait_for(lambda: _knows_ca(fleet, ca), 15, "the CA in every region")
    device = CustomerDevice(fleet, ca, fleet.new_name("ok-hook"))
    assert not device.connects(B)
    device_name = "hooked-" + device.name[3:]
    with fleet.admin(C) as api:
        thing = wait_for(lambda: _thing(api, device_name), 20, "the thing the webhook named")
    assert thing["attributes"]["approvedBy"] == "webhook"
    calls = [r for r in hook.requests if r["certificateId"] == device.cert_id]
    assert len(calls) == 2  # one 503, retried once
    assert calls[0]["region"] == B
    assert calls[0]["certificateStatus"] == "PENDING_ACTIVATION"
    assert "certificatePem" in calls[0]


def test_a_webhook_refusal_leaves_the_certificate_pending(webhook_fleet: tuple[Fleet, Webhook]) -> None:
    fleet, hook = webhook_fleet
    ca = create_root("acme", "webhook CA 2")
    register_ca(fleet, ca, A)
    wait_for(lambda: _knows_ca(fleet, ca), 15, "the CA in every region")
    device = CustomerDevice(fleet, ca, fleet.new_name("no-hook"))
    assert not device.connects(A)
    wait_for(lambda: len([r for r in hook.requests if r["certificateId"] == device.cert_id]) == 2, 20,
             "the webhook's refusal")
    assert device.status(A) == "PENDING_ACTIVATION"
    assert not device.connects(A)


def test_a_webhook_down_for_a_whole_round_is_asked_again(webhook_fleet: tuple[Fleet, Webhook]) -> None:
    fleet, hook = webhook_fleet
    ca = create_root("acme", "webhook CA 3")
    register_ca(fleet, ca, C)
    wait_for(lambda: _knows_ca(fleet, ca), 15, "the CA in every region")
    device = CustomerDevice(fleet, ca, fleet.new_name("late-hook"))
    assert not device.connects(C)
    wait_for(lambda: device.status(A) == "ACTIVE", 30, "the activation once the webhook is back")
    calls = [r for r in hook.requests if r["certificateId"] == device.cert_id]
    assert len(calls) == ATTEMPTS + 1  # a failed round, then one more call after retryS
    assert device.connects(C)


def _knows_ca(fleet: Fleet, ca: Any) -> bool:
    for region in REGIONS:
        with fleet.admin(region) as api:
            try:
                api.call("GET", f"/cacertificate/{certificate_id(ca.cert)}")
            except NotFound:
                return False
    return True


def _thing(api: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(api.call("GET", f"/things/{name}"))
    except NotFound:
        return None
