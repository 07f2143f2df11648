"""Certificates with the `cryptography` package: the site CA, host certificates it issues, and
reading PEMs back (names covered, validity, key match) for plans and `validate`."""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Issued certificates start a little in the past: clocks of nodes and clients drift.
BACKDATE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class CertInfo:
    subject: str
    names: tuple[str, ...]  # DNS and IP subject alternative names
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    fingerprint: str  # sha256 hex of the DER
    is_ca: bool

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or utcnow())).total_seconds() / 86400


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_ca(common_name: str, days: int, now: dt.datetime | None = None) -> tuple[str, str]:
    """A new CA: (certificate PEM, private key PEM). P-256: small, fast, accepted everywhere."""
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca_cert_pem: str, ca_key_pem: str, names: list[str], days: int,
          now: dt.datetime | None = None, not_before: dt.datetime | None = None) -> tuple[str, str]:
    """A server certificate for `names` signed by the CA: (certificate PEM, key PEM). The CA is
    not appended: clients must already hold it (a root sent along is never what they trust)."""
    now = now or utcnow()
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (now - BACKDATE)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _cert_pem(cert), _key_pem(key)


def load_chain(pem: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text; ValueError when there is none or one is broken."""
    certs = x509.load_pem_x509_certificates(pem.encode())
    if not certs:
        raise ValueError("no certificate in the PEM text")
    return certs


def info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(cert.subject.rfc4514_string(), names, cert.not_valid_before_utc, cert.not_valid_after_utc,
                    cert.serial_number, cert.fingerprint(hashes.SHA256()).hex(), is_ca)


def read_info(pem: str) -> CertInfo:
    """The first (leaf) certificate of a chain."""
    return info(load_chain(pem)[0])


def covers(cert_names: tuple[str, ...], host: str) -> bool:
    """RFC 6125: exact match, or a wildcard `*.x` covering exactly one left-most label."""
    host = host.lower().rstrip(".")
    for n in cert_names:
        n = n.lower().rstrip(".")
        if n == host:
            return True
        if n.startswith("*.") and host.count(".") == n.count(".") and fnmatch.fnmatchcase(host, n) and "." in host:
            return True
    return False


def key_matches(cert_pem: str, key_pem: str) -> bool:
    cert = load_chain(cert_pem)[0]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(serialization.Encoding.PEM, pub)
                == key.public_key().public_bytes(serialization.Encoding.PEM, pub))


def signed_by(cert_pem: str, ca_pem: str) -> bool:
    """True when the leaf of `cert_pem` verifies under the CA certificate `ca_pem`."""
    leaf = load_chain(cert_pem)[0]
    ca = load_chain(ca_pem)[0]
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
        return False
    return True
