"""Symmetric-key proof of enrollment: derived device keys, signatures over id, CSR and time."""

from __future__ import annotations

import pytest

from geofleet.domain.enrollment import csr_fingerprint, decode_key, device_key, encode_key, sign, verify
from geofleet.domain.errors import Unauthorized

GROUP = b"g" * 32
NOW = 1_800_000_000
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nabc\n-----END CERTIFICATE REQUEST-----\n"


def signed(device_id: str = "dev-1", csr: str = CSR, at: int = NOW, key: bytes | None = None) -> str:
    return sign(key or device_key(GROUP, device_id), device_id, csr_fingerprint(csr), at)


def test_a_valid_proof_passes_and_device_keys_differ() -> None:
    verify(GROUP, "dev-1", csr_fingerprint(CSR), NOW, signed(), now=NOW + 10)
    assert device_key(GROUP, "dev-1") != device_key(GROUP, "dev-2")
    assert decode_key(encode_key(device_key(GROUP, "dev-1"))) == device_key(GROUP, "dev-1")


@pytest.mark.parametrize(("device_id", "csr", "at", "now", "message"), [
    ("dev-2", CSR, NOW, NOW, "does not match"),             # another device id
    ("dev-1", CSR + "x", NOW, NOW, "does not match"),       # an altered CSR
    ("dev-1", CSR, NOW + 1, NOW, "does not match"),         # an altered timestamp
    ("dev-1", CSR, NOW, NOW + 301, "timestamp"),            # too old: a replay from the past
    ("dev-1", CSR, NOW, NOW - 301, "timestamp"),            # too far in the future
])
def test_altered_or_stale_requests_fail(device_id: str, csr: str, at: int, now: int, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        verify(GROUP, device_id, csr_fingerprint(csr), at, signed(), now=now)


def test_a_key_from_another_group_fails() -> None:
    forged = signed(key=device_key(b"h" * 32, "dev-1"))
    with pytest.raises(Unauthorized):
        verify(GROUP, "dev-1", csr_fingerprint(CSR), NOW, forged, now=NOW)
    with pytest.raises(Unauthorized, match="base64"):
        decode_key("not base64!")
