"""Certificates for the TLS tests, made by the tests: a farm CA and the farm's certificate, and a stranger's."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from farm.net.tls import TlsConfig

#: The names the farm's certificate carries: where the test daemons listen, and a farm-wide name.
FARM_NAMES = ("127.0.0.1", "localhost", "farm.test")


class TlsFiles(NamedTuple):
    """PEM files in one directory: the farm's CA, certificate and key; another CA with its own certificate."""

    ca: str
    cert: str
    key: str
    other_ca: str
    other_cert: str
    other_key: str

    def daemon(self, **overrides: Optional[str]) -> TlsConfig:
        """What every farm daemon is given: the farm's certificate, key and CA."""
        fields = dict(cert=self.cert, key=self.key, ca=self.ca)
        fields.update(overrides)
        return TlsConfig(**fields)

    def client(self, **overrides: Optional[str]) -> TlsConfig:
        """What a client is given: the farm's CA."""
        fields = dict(ca=self.ca)
        fields.update(overrides)
        return TlsConfig(**fields)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> str:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return str(path)


def _write_cert(cert: x509.Certificate, path: Path) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def make_ca(directory: Path, name: str) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write_cert(cert, directory / (name + "-ca.pem"))


def make_leaf(
    directory: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str]
) -> Tuple[str, str]:
    """A server certificate for ``names`` (IP addresses or DNS names) signed by ``ca``: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives = []
    for entry in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternatives.append(x509.DNSName(entry))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write_cert(cert, directory / (name + ".pem")), _write_key(key, directory / (name + ".key"))


def make_tls_files(directory: Path) -> TlsFiles:
    """The farm's CA and a certificate for :data:`FARM_NAMES`; another CA and its certificate for the same names."""
    ca, ca_key, ca_path = make_ca(directory, "farm")
    cert, key = make_leaf(directory, "farm-daemon", ca, ca_key, FARM_NAMES)
    other, other_key, other_path = make_ca(directory, "stranger")
    other_cert, other_leaf_key = make_leaf(directory, "stranger-daemon", other, other_key, FARM_NAMES)
    return TlsFiles(ca_path, cert, key, other_path, other_cert, other_leaf_key)
