"""Bootstrapping a device fresh from the factory.

The device knows its id, its enrollment key (derived from its group's key at the factory), the
group's name, a list of bootstrap URLs (any regions) and the fleet root CA. It makes its key
and CSR here, signs the request, tries the URLs in order until one answers, and stores key,
certificate and endpoints atomically with mode 0600. When credentials exist it never
provisions again; a lost answer is retried with the same CSR, which the fleet answers with the
same certificate.

``bootstrap`` blocks (for device programs without asyncio); ``bootstrap_async`` is the same
exchange on the running event loop. Both share everything but the HTTP call.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from geofleet.domain.endpoints import Endpoint
from geofleet.domain.enrollment import csr_fingerprint, decode_key, sign
from geofleet.domain.errors import GeofleetError
from geofleet.pki.ca import key_pem, load_key, make_csr, new_key
from geofleet.pki.files import write_private


class ProvisioningFailed(GeofleetError):
    """No bootstrap URL provisioned the device, or one refused it (the message says which).

    Example::

        try:
            credentials = bootstrap(device_id, key, group, urls, root_ca, out)
        except ProvisioningFailed as exc:
            print(exc)
    """

    status = 502
    code = "ProvisioningFailed"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a provisioned device keeps: its files and its regions, home first.

    Example::

        credentials = bootstrap(device_id, key, group, urls, root_ca, Path("/var/lib/device"))
        async with DeviceClient.from_credentials(credentials) as device: ...
    """

    device_id: str
    key_file: Path
    cert_file: Path
    ca_file: Path
    endpoints: tuple[Endpoint, ...]
    home_region: str
    reasons: tuple[str, ...] = ()
    """Why the fleet chose this home (residency rules, distance, "location unknown"...)."""
    fresh: bool = field(default=True, compare=False)
    """True when this call provisioned the device; False when it read credentials stored by an
    earlier call (bootstrap on the same folder provisions only once). Not part of equality: the
    credentials are the same either way."""


@dataclass(frozen=True, slots=True)
class _Request:
    """One provisioning attempt's inputs, made once per ``bootstrap`` call."""

    device_id: str
    group: str | None
    csr: str
    device_key: bytes
    key_file: Path
    verify: ssl.SSLContext
    headers: dict[str, str]

    def body(self) -> dict[str, Any]:
        """Signed now: the fleet rejects stale timestamps, so each URL gets a fresh signature."""
        now = int(time.time())
        return {"deviceId": self.device_id, "certificateSigningRequest": self.csr, "enrollmentGroup": self.group,
                "timestamp": now, "signature": sign(self.device_key, self.device_id, csr_fingerprint(self.csr), now)}


def bootstrap(device_id: str, enrollment_key: str, group: str | None, urls: list[str], root_ca: Path, out: Path,
              timeout: float = 10.0, *, forwarded_for: str | None = None, local_address: str | None = None
              ) -> Credentials:
    """Provision once; ``group`` is None for a device with an individual enrollment. For programs
    without a running event loop (it runs ``bootstrap_async`` in one of its own).

    ``forwarded_for`` and ``local_address`` stand for a proxy in front of the device (the
    fleet believes X-Forwarded-For only from its trusted proxies): simulations use them to
    place devices around the world from one machine.

    Example::

        credentials = bootstrap("sensor-1", key, "sensors", ["https://eu.example.com:8443"],
                                Path("root-ca.pem"), Path("/var/lib/device"))
    """
    return asyncio.run(bootstrap_async(device_id, enrollment_key, group, urls, root_ca, out, timeout,
                                       forwarded_for=forwarded_for, local_address=local_address))


async def bootstrap_async(device_id: str, enrollment_key: str, group: str | None, urls: list[str], root_ca: Path,
                          out: Path, timeout: float = 10.0, *, forwarded_for: str | None = None,
                          local_address: str | None = None) -> Credentials:
    """``bootstrap`` for asyncio programs: the same exchange, without blocking the event loop
    on the network (the key and files are small: made and written in place).

    Example::

        credentials = await bootstrap_async("sensor-1", key, "sensors", urls, root_ca, out)
    """
    existing = _load(out, device_id)
    if existing is not None:
        return existing
    request = _prepare(device_id, enrollment_key, group, urls, root_ca, out, forwarded_for)
    errors: list[str] = []
    for url in urls:
        try:
            transport = httpx.AsyncHTTPTransport(verify=request.verify, local_address=local_address)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
                response = await http.post(f"{url.rstrip('/')}/v1/provision", json=request.body(),
                                           headers=request.headers)
        except httpx.HTTPError as exc:
            errors.append(f"{url}: {type(exc).__name__}")
            continue
        credentials = _outcome(url, response, out, request, errors)
        if credentials is not None:
            return credentials
    raise ProvisioningFailed("no bootstrap URL provisioned the device: " + "; ".join(errors))


def _prepare(device_id: str, enrollment_key: str, group: str | None, urls: list[str], root_ca: Path, out: Path,
             forwarded_for: str | None) -> _Request:
    if not urls:
        raise ProvisioningFailed("no bootstrap URL given")
    key_file, csr_file = out / f"{device_id}.key.pem", out / f"{device_id}.csr.pem"
    if key_file.exists() and csr_file.exists():  # a previous attempt lost its answer: same key, same CSR
        csr = csr_file.read_text()
        load_key(key_file.read_bytes())  # a damaged key fails here, before the fleet signs its CSR
    else:
        key = new_key()
        csr = make_csr(key, device_id).decode()
        write_private(key_file, key_pem(key))
        write_private(csr_file, csr.encode())
    return _Request(device_id, group, csr, decode_key(enrollment_key), key_file,
                    ssl.create_default_context(cafile=str(root_ca)),
                    {"X-Forwarded-For": forwarded_for} if forwarded_for else {})


def _outcome(url: str, response: httpx.Response, out: Path, request: _Request, errors: list[str]
             ) -> Credentials | None:
    """The credentials of a successful answer; ProvisioningFailed for a refusal (4xx: another
    region would refuse too); None (and the error noted) for a region that failed (5xx)."""
    if response.status_code in (200, 201):
        return _store(out, request.device_id, response.json(), request.key_file)
    message = _message(response)
    if response.status_code < 500:
        raise ProvisioningFailed(f"{url} refused the device ({response.status_code}): {message}")
    errors.append(f"{url}: {response.status_code} {message}")
    return None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]


def _store(out: Path, device_id: str, answer: dict[str, Any], key_file: Path) -> Credentials:
    cert_file, ca_file = out / f"{device_id}.cert.pem", out / "root-ca.pem"
    write_private(cert_file, answer["certificatePem"].encode())
    write_private(ca_file, answer["caChain"][-1].encode())
    reasons = tuple(str(r) for r in answer.get("reasons") or ())
    state = {"deviceId": device_id, "homeRegion": answer["homeRegion"], "endpoints": answer["endpoints"],
             "reasons": list(reasons)}
    write_private(out / f"{device_id}.json", json.dumps(state, indent=2).encode())  # last: marks completion
    (out / f"{device_id}.csr.pem").unlink(missing_ok=True)
    return Credentials(device_id, key_file, cert_file, ca_file, _endpoints(answer["endpoints"]),
                       answer["homeRegion"], reasons)


def _load(out: Path, device_id: str) -> Credentials | None:
    state_file = out / f"{device_id}.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return Credentials(device_id, out / f"{device_id}.key.pem", out / f"{device_id}.cert.pem", out / "root-ca.pem",
                       _endpoints(state["endpoints"]), state["homeRegion"], tuple(state.get("reasons") or ()),
                       fresh=False)


def _endpoints(raw: list[dict[str, Any]]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint.from_json(item) for item in raw)
