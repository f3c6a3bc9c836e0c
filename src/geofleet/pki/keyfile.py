"""Passphrase-protected private keys: PKCS#8 with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and a
high iteration count.

``cryptography``'s ``BestAvailableEncryption`` writes PKCS#8 with PBKDF2 at 2,048 iterations,
which an attacker holding the file can guess passphrases against at millions per second on a GPU;
version 50 offers no knob for the PKCS#8 round count (its ``encryption_builder`` serves OpenSSH
and PKCS#12 only). So the envelope is built here, to the standard (RFC 8018), which
``cryptography`` and ``openssl pkey`` read back without help.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from geofleet.domain.errors import InvalidRequest

KDF_ROUNDS = 600_000
"""PBKDF2-HMAC-SHA256 iterations: OWASP's 2023 figure; about a third of a second per load."""
MIN_PASSPHRASE = 8

_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_SHA256 = "1.2.840.113549.2.9"
_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def encrypt_pkcs8(key: PrivateKeyTypes, passphrase: bytes, rounds: int = KDF_ROUNDS) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` of ``key`` (any key ``cryptography`` can write as PKCS#8)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidRequest(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(16), os.urandom(16)
    derived = PBKDF2HMAC(hashes.SHA256(), 32, salt, rounds).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(derived), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    kdf = _seq(_oid(_PBKDF2), _seq(_octets(salt), _int(rounds), _seq(_oid(_HMAC_SHA256), b"\x05\x00")))
    algorithm = _seq(_oid(_PBES2), _seq(kdf, _seq(_oid(_AES256_CBC), _octets(iv))))
    der = _seq(algorithm, _octets(sealed))
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + b"\n".join(lines) + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"


# -- the little DER this needs ------------------------------------------------------------------

def _tlv(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        return bytes([tag, length]) + value
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    encoded = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        encoded += bytes(reversed(chunk))
    return _tlv(0x06, bytes(encoded))
