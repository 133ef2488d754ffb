"""Throw-away certificates for TLS tests: a CA, a server certificate for localhost/127.0.0.1 and a
client certificate, made with the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["issue", "make_pki"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory: Path, name: str, *, ca: bool = False, san: str = "") -> None:
    """An EC key and a certificate for ``name``: self-signed for the CA, else signed by ca.pem."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key"]
    if ca:
        _openssl("req", "-x509", *key, "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=directory)
        return
    _openssl("req", *key, "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Path:
    """ca.pem/.key, server.pem/.key (localhost, 127.0.0.1) and client.pem/.key in ``directory``.

    Skips the test when openssl is missing.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    issue(directory, "ca", ca=True)
    issue(directory, "server", san="DNS:localhost,IP:127.0.0.1")
    issue(directory, "client")
    return directory
