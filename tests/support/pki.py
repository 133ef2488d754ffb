"""Throw-away certificates for TLS tests, made in-process with the ``cryptography`` package: a CA,
a server certificate for localhost/127.0.0.1, and client certificates with chosen names (common
name, DNS and URI subject alternative names) or signed by another CA."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["issue", "issue_client", "make_pki"]


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())


def _alt_names(san: str) -> list[x509.GeneralName]:
    """``DNS:a,IP:1.2.3.4,URI:spiffe://x`` (openssl's subjectAltName syntax) as general names."""
    out: list[x509.GeneralName] = []
    for part in filter(None, san.split(",")):
        kind, _, value = part.strip().partition(":")
        if kind == "DNS":
            out.append(x509.DNSName(value))
        elif kind == "IP":
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "URI":
            out.append(x509.UniformResourceIdentifier(value))
        elif kind == "email":
            out.append(x509.RFC822Name(value))
        else:
            raise ValueError(f"unsupported subjectAltName kind {kind!r}")
    return out


def issue(directory: Path, name: str, *, ca: bool = False, san: str = "", common_name: str | None = None,
          issuer: str = "ca", client: bool = False) -> tuple[Path, Path]:
    """An EC key and a certificate ``name.pem``/``name.key``: self-signed for a CA, else signed by
    ``issuer`` (``issuer.pem``/``.key`` in ``directory``). Returns (certificate, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)])
    now = datetime.datetime.now(datetime.UTC)
    if ca:
        signer, issuer_name = key, subject
    else:
        signer, issuer_cert = _load(directory, issuer)
        issuer_name = issuer_cert.subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(san)), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    _write(directory, name, key, builder.sign(signer, hashes.SHA256()))
    return directory / f"{name}.pem", directory / f"{name}.key"


def issue_client(directory: Path, name: str, *, common_name: str | None = None, san: str = "",
                 issuer: str = "ca") -> tuple[bytes, bytes]:
    """A client certificate signed by ``issuer``; returns its (certificate chain, private key) PEM bytes."""
    cert, key = issue(directory, name, san=san, common_name=common_name, issuer=issuer, client=True)
    return cert.read_bytes(), key.read_bytes()


def make_pki(directory: Path) -> Path:
    """ca.pem/.key, server.pem/.key (localhost, 127.0.0.1) and client.pem/.key (CN=client) in ``directory``."""
    issue(directory, "ca", ca=True)
    issue(directory, "server", san="DNS:localhost,IP:127.0.0.1")
    issue(directory, "client", client=True)
    return directory
