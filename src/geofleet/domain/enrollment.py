"""Proof of enrollment for provisioning, like Azure DPS symmetric-key enrollment groups.

A group has a secret key. At the factory each device gets its own key, HMAC-SHA256(group key,
device id), so one leaked device key exposes one device, not the group. To provision, a device
signs its request (device id, the SHA-256 of its CSR, a Unix timestamp) with its key; the
service derives the same device key from the group key and checks the signature and that the
timestamp is within the allowed clock skew. Altering any part breaks the signature; an old
request is refused by the skew bound (and, within it, by a replay cache of the service).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from geofleet.domain.errors import Unauthorized

PROOF_VERSION = "geofleet-provision-v1"
MAX_SKEW_S = 300


def device_key(group_key: bytes, device_id: str) -> bytes:
    return hmac.new(group_key, device_id.encode(), hashlib.sha256).digest()


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise Unauthorized("the enrollment key is not valid base64") from None


def csr_fingerprint(csr_pem: str | bytes) -> str:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    return hashlib.sha256(data.strip()).hexdigest()


def _message(device_id: str, fingerprint: str, timestamp: int) -> bytes:
    return f"{PROOF_VERSION}\n{device_id}\n{fingerprint}\n{timestamp}".encode()


def sign(key: bytes, device_id: str, fingerprint: str, timestamp: int) -> str:
    return hmac.new(key, _message(device_id, fingerprint, timestamp), hashlib.sha256).hexdigest()


def verify(group_key: bytes, device_id: str, fingerprint: str, timestamp: int, signature: str, now: float,
           max_skew_s: int = MAX_SKEW_S) -> None:
    """Raise Unauthorized, saying which check failed, unless the proof is valid now."""
    verify_device(device_key(group_key, device_id), device_id, fingerprint, timestamp, signature, now, max_skew_s)


def verify_device(key: bytes, device_id: str, fingerprint: str, timestamp: int, signature: str, now: float,
                  max_skew_s: int = MAX_SKEW_S) -> None:
    """The same check with the device's own key (an individual enrollment has no group)."""
    if abs(now - timestamp) > max_skew_s:
        raise Unauthorized(
            f"the request timestamp is {abs(now - timestamp):.0f} s from the service's clock "
            f"(at most {max_skew_s} s allowed): check the device's clock and sign a fresh request"
        )
    expected = sign(key, device_id, fingerprint, timestamp)
    # Bytes, not str: compare_digest raises TypeError for a str with non-ASCII characters, and
    # the signature is whatever the (unauthenticated) caller sent.
    if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
        raise Unauthorized("the enrollment signature does not match this device id, CSR and timestamp")
