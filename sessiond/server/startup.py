"""Start-up checks: an operator's mistake becomes one line (:class:`StartupError`), found before
anything listens — not a traceback, and not gRPC's "Failed to bind" for a bad certificate.

Listen addresses are probed with a plain socket (gRPC would only say "Failed to bind" and print
its own log lines); TLS files are loaded with :mod:`ssl` (the same PEM formats gRPC reads), which
tells a missing file from garbage from a key that belongs to another certificate.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from pathlib import Path

import grpc

from sessiond.config import ServerConfig
from sessiond.core.token import MIN_KEY_BYTES, TokenKeys
from sessiond.hostport import parse_host_port
from sessiond.server.auth import Authenticator, CredentialsError, Role

# gRPC address forms that are not host:port (nothing to probe: gRPC reports those itself).
_NOT_HOST_PORT = ("unix:", "unix-abstract:", "vsock:", "ipv4:", "ipv6:", "dns:")


class StartupError(Exception):
    """sessiond cannot start as configured; the message says why, in one line."""


def check_listen(address: str, field: str) -> None:
    """StartupError unless ``address`` can be listened on: it parses, resolves, is an address of
    this machine, and its port is free (gRPC's port sharing is off, see ``grpc.so_reuseport``)."""
    if address.startswith(_NOT_HOST_PORT):
        return
    try:
        host, port = parse_host_port(address, field, allow_port_zero=True)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"{field} {address!r}: cannot resolve {host!r} ({exc})") from None
    failures: list[OSError] = []
    for family, kind, proto, _, where in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"{field} {address}: port {port} is in use "
                                       "(another sessiond, or another program, listens there)") from None
                failures.append(exc)
    if len(failures) == len(candidates):
        raise StartupError(f"{field} {address}: cannot listen there ({failures[0].strerror})")


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{field} {path}: {exc.strerror or exc}") from None


def _detail(exc: Exception) -> str:
    """OpenSSL's words for what is wrong, without its source location."""
    text = getattr(exc, "reason", None) or re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc))
    return "" if text in ("", "[SSL] PEM lib", "[X509] PEM lib") else f" ({text})"


def _certificates(context: ssl.SSLContext, pem: bytes, problem: str) -> None:
    try:
        # latin-1 maps every byte; ssl then rejects what is not ASCII PEM (TypeError) or not a certificate.
        context.load_verify_locations(cadata=pem.decode("latin-1"))
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise StartupError(f"{problem}{_detail(exc)}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (None = plaintext), each file checked first."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    cert, key = _read(config.tls_cert, "tls_cert"), _read(config.tls_key, "tls_key")
    client_ca = None if config.tls_client_ca is None else _read(config.tls_client_ca, "tls_client_ca")
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _certificates(check, cert, f"tls_cert {config.tls_cert}: not a PEM certificate")
    try:
        # password: an encrypted key fails here rather than prompting on the terminal.
        check.load_cert_chain(config.tls_cert, config.tls_key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(f"tls_key {config.tls_key} does not match tls_cert {config.tls_cert}") from None
        raise StartupError(f"tls_key {config.tls_key}: not an unencrypted PEM private key{_detail(exc)}") from None
    if client_ca is not None:
        _certificates(check, client_ca, f"tls_client_ca {config.tls_client_ca}: not a PEM CA bundle")
    if client_ca is None:
        return grpc.ssl_server_credentials([(key, cert)])
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)


def _key(value: str | None, path: Path | None, setting: str) -> bytes | None:
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(f"{setting}_file {path}: {reason}") from None
        setting += f"_file {path}"
    if value is None:
        return None
    key = value.strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise StartupError(f"{setting}: a key must be at least {MIN_KEY_BYTES} bytes (e.g. openssl rand -base64 48)")
    return key


def token_keys(config: ServerConfig, now: float) -> TokenKeys | None:
    """The configured signing keys (None: none configured, use a per-process key); ``now`` is the
    core's clock, from which the previous key's acceptance period counts."""
    current = _key(config.token_key, config.token_key_file, "token_key")
    if current is None:
        return None
    previous = _key(config.previous_token_key, config.previous_token_key_file, "previous_token_key")
    if previous is None:
        return TokenKeys(current)
    return TokenKeys(current, previous, now + config.previous_token_key_period.total_seconds())


def authenticator(config: ServerConfig) -> Authenticator:
    """The credentials, loaded and checked (a bad file is a StartupError)."""
    try:
        return Authenticator(config)
    except CredentialsError as exc:
        raise StartupError(str(exc)) from None


def security_warnings(config: ServerConfig, auth: Authenticator) -> list[str]:
    """What an operator should know about how open this server is: one line each, for WARNING."""
    out = []
    where = f"anyone who can reach {config.listen}"
    fix = "--tokens-file, --{}-token-file or --tls-client-roles"
    if not auth.enabled:
        out.append(f"no credentials configured: {where} may register workers, and create, list and complete every "
                   f"session (set {fix.format('caller')})")
    else:
        if Role.WORKER in auth.unprotected:
            out.append(f"the worker role is not protected: {where} may register workers and take sessions "
                       f"(set {fix.format('worker')})")
        if Role.CALLER in auth.unprotected:
            out.append(f"the caller and operator roles are not protected: {where} may create, list and complete "
                       f"every session (set {fix.format('caller')})")
        if auth.credentials.tokens and config.tls_cert is None:
            out.append("bearer tokens are configured on a plaintext port: they cross the network in clear text "
                       "(set --tls-cert and --tls-key)")
    if config.token_key is None and config.token_key_file is None:
        lost = "recreate tokens do not survive a restart"
        if auth.enabled:
            lost += ", and sessions that workers report after a restart cannot be verified and are not adopted"
        out.append(f"no --token-key-file (or SESSIOND_TOKEN_KEY): a random per-process key signs recreate tokens; "
                   f"{lost}")
    return out
