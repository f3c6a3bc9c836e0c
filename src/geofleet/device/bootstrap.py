"""Bootstrapping a device fresh from the factory.

The device knows its id, its enrollment key (derived from its group's key at the factory), the
group's name, a list of bootstrap URLs (any regions) and the fleet root CA. It makes its key
and CSR here, signs the request, tries the URLs in order until one answers, and stores key,
certificate and endpoints atomically with mode 0600. When credentials exist it never
provisions again; a lost answer is retried with the same CSR, which the fleet answers with the
same certificate.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geofleet.config import write_private
from geofleet.domain.enrollment import csr_fingerprint, decode_key, sign
from geofleet.domain.errors import GeofleetError
from geofleet.pki.ca import key_pem, load_key, make_csr, new_key


class ProvisioningFailed(GeofleetError):
    status = 502
    code = "ProvisioningFailed"


@dataclass(frozen=True, slots=True)
class Credentials:
    device_id: str
    key_file: Path
    cert_file: Path
    ca_file: Path
    endpoints: list[dict[str, Any]]
    home_region: str


def bootstrap(device_id: str, enrollment_key: str, group: str | None, urls: list[str], root_ca: Path, out: Path,
              timeout: float = 10.0, *, forwarded_for: str | None = None, local_address: str | None = None
              ) -> Credentials:
    """Provision once; ``group`` is None for a device with an individual enrollment.

    ``forwarded_for`` and ``local_address`` stand for a proxy in front of the device (the
    fleet believes X-Forwarded-For only from its trusted proxies): simulations use them to
    place devices around the world from one machine."""
    existing = _load(out, device_id)
    if existing is not None:
        return existing
    if not urls:
        raise ProvisioningFailed("no bootstrap URL given")
    key_file, csr_file = out / f"{device_id}.key.pem", out / f"{device_id}.csr.pem"
    if key_file.exists() and csr_file.exists():  # a previous attempt lost its answer: same key, same CSR
        key, csr = load_key(key_file.read_bytes()), csr_file.read_text()
    else:
        key = new_key()
        csr = make_csr(key, device_id).decode()
        write_private(key_file, key_pem(key))
        write_private(csr_file, csr.encode())
    device_key = decode_key(enrollment_key)
    verify = ssl.create_default_context(cafile=str(root_ca))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    errors = []
    for url in urls:
        now = int(time.time())
        body = {"deviceId": device_id, "certificateSigningRequest": csr, "enrollmentGroup": group,
                "timestamp": now, "signature": sign(device_key, device_id, csr_fingerprint(csr), now)}
        try:
            transport = httpx.HTTPTransport(verify=verify, local_address=local_address)
            with httpx.Client(transport=transport, timeout=timeout) as http:
                response = http.post(f"{url.rstrip('/')}/v1/provision", json=body, headers=headers)
        except httpx.HTTPError as exc:
            errors.append(f"{url}: {type(exc).__name__}")
            continue
        if response.status_code in (200, 201):
            return _store(out, device_id, response.json(), key_file)
        message = _message(response)
        if response.status_code < 500:
            raise ProvisioningFailed(f"{url} refused the device ({response.status_code}): {message}")
        errors.append(f"{url}: {response.status_code} {message}")
    raise ProvisioningFailed("no bootstrap URL provisioned the device: " + "; ".join(errors))


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]


def _store(out: Path, device_id: str, answer: dict[str, Any], key_file: Path) -> Credentials:
    cert_file, ca_file = out / f"{device_id}.cert.pem", out / "root-ca.pem"
    write_private(cert_file, answer["certificatePem"].encode())
    write_private(ca_file, answer["caChain"][-1].encode())
    state = {"deviceId": device_id, "homeRegion": answer["homeRegion"], "endpoints": answer["endpoints"]}
    write_private(out / f"{device_id}.json", json.dumps(state, indent=2).encode())  # last: marks completion
    (out / f"{device_id}.csr.pem").unlink(missing_ok=True)
    return Credentials(device_id, key_file, cert_file, ca_file, answer["endpoints"], answer["homeRegion"])


def _load(out: Path, device_id: str) -> Credentials | None:
    state_file = out / f"{device_id}.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return Credentials(device_id, out / f"{device_id}.key.pem", out / f"{device_id}.cert.pem", out / "root-ca.pem",
                       state["endpoints"], state["homeRegion"])
