"""At-rest encryption of the secrets a store holds: the keys of enrollment groups and individual
enrollments (whoever reads them can provision devices into the fleet).

The store seals the ``key`` field of those records as it writes a body (records, change log,
parked records) and opens it as it reads one, so the rest of the region, and the replication wire
(mutual TLS), see the key as before, while ``store.db`` and its WAL hold only AES-GCM ciphertext.
The AES key is derived (HKDF-SHA256) from the fleet secret, a file beside the admin token that
is never written to any store; the record's kind and key are the associated data, so a sealed
value copied onto another record does not open.

A value without the ``sealed:`` prefix (a store from before sealing) is read as it is, and sealed
the next time the record is written.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geofleet.domain.errors import ConfigError

SEALED_KINDS = frozenset({"enrollment-group", "enrollment"})
SEALED_FIELD = "key"
_PREFIX = "sealed:v1:"


class SealError(ConfigError):
    """A sealed value does not open: the fleet secret is not the one it was sealed with."""


class Sealer:
    def __init__(self, fleet_secret: bytes) -> None:
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"geofleet store sealing v1").derive(fleet_secret)
        self._aead = AESGCM(key)

    def seal_body(self, kind: str, key: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        if body is None or kind not in SEALED_KINDS or not isinstance(body.get(SEALED_FIELD), str) \
                or body[SEALED_FIELD].startswith(_PREFIX):
            return body
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, body[SEALED_FIELD].encode(), _aad(kind, key))
        return {**body, SEALED_FIELD: _PREFIX + base64.b64encode(nonce + sealed).decode()}

    def open_body(self, kind: str, key: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        value = body.get(SEALED_FIELD) if isinstance(body, dict) else None
        if body is None or kind not in SEALED_KINDS or not isinstance(value, str) or not value.startswith(_PREFIX):
            return body
        raw = base64.b64decode(value[len(_PREFIX):])
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], _aad(kind, key))
        except InvalidTag:
            raise SealError(f"the {kind} {key!r} in the store was sealed with another fleet secret; restore "
                            "the data directory's fleet-secret file from a backup") from None
        return {**body, SEALED_FIELD: plain.decode()}


def _aad(kind: str, key: str) -> bytes:
    return f"{kind}\x00{key}".encode()
