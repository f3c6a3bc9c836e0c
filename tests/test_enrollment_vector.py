"""The provisioning signature's published test vector (docs/provisioning.md) is what the code
computes: an implementation in another language can be checked against the document."""

from __future__ import annotations

import re
from pathlib import Path

from geofleet.domain.enrollment import csr_fingerprint, decode_key, device_key, encode_key, sign

DOC = Path(__file__).parent.parent / "docs" / "provisioning.md"


def _row(name: str) -> str:
    match = re.search(rf"^\| {re.escape(name)} \| `([^`]*)`", DOC.read_text(), re.M)
    assert match is not None, f"no row {name!r} in {DOC}"
    return match.group(1)


def test_the_documented_vector_is_what_the_code_computes() -> None:
    group_key = decode_key(_row("group key (base64)"))
    assert group_key == bytes(range(32))
    key = device_key(group_key, _row("device id"))
    assert key.hex() == _row("device key (hex)")
    assert encode_key(key) == _row("device key (base64)")
    fingerprint = csr_fingerprint(_row("CSR PEM text").replace("\\n", "\n"))
    assert fingerprint == _row("fingerprint")
    assert sign(key, _row("device id"), fingerprint, int(_row("timestamp"))) == _row("signature")
