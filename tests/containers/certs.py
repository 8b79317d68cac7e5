"""The certificates of a mesh under mutual TLS, made on the spot: a mesh CA,
the replicas' certificate (one for every pod, as cert-manager would issue it
for a StatefulSet: deploy/cert-manager), an operator's, and two that must be
refused: one from the mesh CA that names no peer or operator, and one from
another CA.

Keys are ECDSA P-256; every certificate carries the key usages cert-manager
gives (digital signature, key encipherment) and the extended key usages its
role needs.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Matched by the operator names the tests give the chart (tls.operatorNames).
OPERATOR_PATTERN = "*.operators.mindoo-replica.test"
OPERATOR_NAME = "ops.operators.mindoo-replica.test"
STRANGER_NAME = "stranger.example.org"


@dataclasses.dataclass
class Identity:
    """A certificate (PEM, leaf first) and its private key (PEM), with the
    files they were written to."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path


@dataclasses.dataclass
class MeshCerts:
    ca: bytes  # the mesh CA's certificate (PEM)
    ca_file: Path
    replica: Identity
    operator: Identity
    stranger: Identity  # from the mesh CA, naming no peer or operator
    foreign: Identity  # from another CA, with the operator's name
    replica_names: list[str]


class _Ca:
    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: list[str], usages: list[x509.ObjectIdentifier]) -> tuple[bytes, bytes]:
        """A certificate for `names` (DNS names, or IP addresses), and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make(directory: Path, replica_names: list[str]) -> MeshCerts:
    """Writes ca.crt and <who>.crt/.key into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    client = [ExtendedKeyUsageOID.CLIENT_AUTH]
    mesh, other = _Ca("mindoo-replica test mesh CA"), _Ca("some other CA")

    def identity(who: str, pair: tuple[bytes, bytes]) -> Identity:
        cert, key = pair
        (directory / f"{who}.crt").write_bytes(cert)
        (directory / f"{who}.key").write_bytes(key)
        (directory / f"{who}.key").chmod(0o600)
        return Identity(cert, key, directory / f"{who}.crt", directory / f"{who}.key")

    (directory / "ca.crt").write_bytes(mesh.pem())
    return MeshCerts(
        ca=mesh.pem(),
        ca_file=directory / "ca.crt",
        replica=identity("replica", mesh.issue(replica_names, both)),
        operator=identity("operator", mesh.issue([OPERATOR_NAME], client)),
        stranger=identity("stranger", mesh.issue([STRANGER_NAME], client)),
        foreign=identity("foreign", other.issue([OPERATOR_NAME], client)),
        replica_names=replica_names,
    )
