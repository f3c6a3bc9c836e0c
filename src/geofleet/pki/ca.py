"""Certificate authorities, CSR signing and certificate identities (EC P-256 throughout)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geofleet.domain.errors import InvalidRequest
from geofleet.pki.keyfile import encrypt_pkcs8

ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 1825
LEAF_DAYS = 825
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA that can sign: its key and its certificate."""

    key: PrivateKey
    cert: x509.Certificate


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def certificate_id(cert: x509.Certificate | bytes) -> str:
    """AWS's certificate id: the hex SHA-256 of the certificate's DER bytes."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _name(common_name: str, org: str = "geofleet") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def create_root(fleet: str, purpose: str = "fleet root CA") -> Authority:
    key = new_key()
    name = _name(f"{fleet} {purpose}")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(_ski(key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def create_intermediate(root: Authority, region: str) -> Authority:
    key = new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"geofleet region CA {region}")).issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=INTERMEDIATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(root), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Authority(key, cert)


def _aki(issuer: Authority) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())


def issue_leaf(
    issuer: Authority,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    common_name: str,
    *,
    server_names: tuple[str, ...] = (),
    client: bool = True,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """Sign an end-entity certificate; ``server_names`` (DNS names or IPs) make it a server cert."""
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(_aki(issuer), critical=False)
    )
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
                                        critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_csr(key: PrivateKey, common_name: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Load and vet a CSR: well-formed, self-signature valid, and a strong enough key."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise InvalidRequest("the CSR is not a PEM-encoded PKCS#10 certificate signing request") from None
    try:
        valid, key = csr.is_signature_valid, csr.public_key()
    except ValueError as exc:
        raise InvalidRequest(f"the CSR's public key is malformed: {exc}") from None
    if not valid:
        raise InvalidRequest("the CSR's signature does not verify: it was altered or not signed by its key")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise InvalidRequest(f"the CSR's key uses curve {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(f"the CSR's RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS}")
    else:
        raise InvalidRequest("the CSR's key type is not supported; use EC P-256/P-384 or RSA >= 2048 bits")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def sign_csr(issuer: Authority, csr: x509.CertificateSigningRequest, *, days: int = LEAF_DAYS
             ) -> x509.Certificate:
    """Sign a device CSR (parsed and vetted where it arrived: ``load_csr``) as a client
    certificate; the key never leaves the device."""
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return issue_leaf(issuer, public_key, csr_common_name(csr) or "geofleet device", days=days)


# -- PEM encoding -------------------------------------------------------------------------------

def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: str | bytes) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise InvalidRequest("not a PEM-encoded X.509 certificate") from None


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM; with a passphrase, PBES2 at ``keyfile.KDF_ROUNDS`` (not cryptography's 2,048)."""
    if passphrase:
        return encrypt_pkcs8(key, passphrase)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes, passphrase: bytes | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, passphrase)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"cannot load private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidRequest("expected an EC private key")
    return key
