"""The fleet PKI: CSR vetting, certificate ids, and one device certificate trusted by every
region's TLS (checked with Python's real ssl module)."""

from __future__ import annotations

import hashlib
import ssl
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geofleet.config import DataDir, FleetConfig
from geofleet.domain.errors import ConfigError, InvalidRequest
from geofleet.pki.ca import (
    certificate_id,
    create_intermediate,
    create_root,
    key_pem,
    load_csr,
    load_key,
    make_csr,
    new_key,
    sign_csr,
)
from geofleet.pki.fleet import initialize, region_authority


def _csr_with(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_certificate_id_is_sha256_of_der() -> None:
    root = create_root("t")
    cert = sign_csr(create_intermediate(root, "r1"), load_csr(make_csr(new_key(), "dev")))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certificate_id(cert) == hashlib.sha256(der).hexdigest() == certificate_id(der)


@pytest.mark.parametrize(("key", "message"), [
    (rsa.generate_private_key(65537, 1024), "at least 2048"),
    (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
])
def test_weak_or_wrong_keys_are_refused(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        load_csr(_csr_with(key))


def test_rsa_2048_is_accepted() -> None:
    load_csr(_csr_with(rsa.generate_private_key(65537, 2048)))


def test_tampered_csr_is_refused() -> None:
    csr = bytearray(make_csr(new_key(), "device-a"))
    body = csr.decode().splitlines()
    # Flip one character inside the base64 body: the self-signature no longer verifies (or it no longer parses).
    line = body[3]
    body[3] = line[:10] + ("A" if line[10] != "A" else "B") + line[11:]
    with pytest.raises(InvalidRequest):
        load_csr("\n".join(body).encode())


def test_root_key_is_encrypted_when_a_passphrase_is_given(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "fleet")
    config = FleetConfig.from_json({"regions": [{"name": "us-east-1"}]})
    initialize(data, config, passphrase=b"correct horse")
    pem = data.root_key.read_bytes()
    assert b"ENCRYPTED" in pem
    with pytest.raises(InvalidRequest):
        load_key(pem, None)
    load_key(pem, b"correct horse")
    assert data.root_key.stat().st_mode & 0o077 == 0
    assert data.admin_token.stat().st_mode & 0o077 == 0
    with pytest.raises(ConfigError, match="already holds a fleet"):
        initialize(data, config)


def test_a_device_certificate_from_one_region_passes_tls_of_every_region(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "fleet")
    config = FleetConfig.from_json({"regions": [{"name": "us-east-1"}, {"name": "eu-west-1"}]})
    initialize(data, config)
    device_key = new_key()
    cert = sign_csr(region_authority(data, "us-east-1"), load_csr(make_csr(device_key, "dev")))
    (tmp_path / "dev.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "dev.key").write_bytes(key_pem(device_key))
    for region in ("us-east-1", "eu-west-1"):
        paths = data.region(region)
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(data.trust_bundle))
        server.load_cert_chain(str(paths.server_chain), str(paths.server_key))
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(cafile=str(data.root_ca))
        client.load_cert_chain(str(tmp_path / "dev.pem"), str(tmp_path / "dev.key"))
        peer = _handshake(server, client)
        assert certificate_id(peer) == certificate_id(cert)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """A real TLS handshake over a socket pair; returns the client certificate the server saw."""
    import socket

    a, b = socket.socketpair()
    seen: list[bytes] = []

    def serve() -> None:
        with server.wrap_socket(a, server_side=True) as tls:
            seen.append(tls.getpeercert(binary_form=True) or b"")

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(b, server_hostname="localhost") as tls:
        tls.do_handshake()
    thread.join(10)
    return seen[0]
