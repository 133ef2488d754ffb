"""Authentication: who is calling (a principal with roles), decided in one place.

Credentials, all optional and combinable:

- ``--tokens-file``: one bearer token per line, ``TOKEN PRINCIPAL ROLE[,ROLE...]`` (``#`` starts a
  comment; ``TOKEN`` may be written ``sha256:<64 hex digits>``, the SHA-256 of the token, so the file
  need not hold the secret itself);
- ``--tls-client-roles`` (with mTLS): one client-certificate identity per line,
  ``IDENTITY ROLE[,ROLE...]``; a certificate's principal is the first of its subject alternative
  names listed there, else its common name if listed;
- the simple pair: ``--caller-token`` (principal ``caller``, roles caller and operator: one tenant,
  who also operates) and ``--worker-token`` (principal ``worker``, role worker), each also from a file.

Roles: ``worker`` (the WorkerHeartbeat stream), ``caller`` (sessions of its own), ``operator``
(sees and completes every session, the dashboard). A bearer token wins over the connection's
certificate; a request with neither is anonymous. A role that no credential grants at start is
*unprotected*: anonymous requests get it (as with no credentials at all), and ``serve`` logs a
WARNING. Which roles are protected is fixed at start; SIGHUP re-reads the files (:meth:`reload`)
and changes who holds which role, never whether a role needs a credential.

Peers (replicas on the etcd store, SPEC §6.5): a replica serves a call for a session another
replica holds by forwarding it there. It authenticates as a *peer* (``authorization: Bearer
<peer token>``) and names the caller it already authenticated (``sessiond-forwarded-for``: the
principal's name, ``sessiond-forwarded-roles``: its roles, ``sessiond-forwarded-by``: the
forwarding replica). What the peer token proves: "a replica of this service, which checked this
caller's own credential, vouches for it". It grants nothing by itself: a peer-token request without
a forwarded identity is refused, and the forwarded roles are the caller side's only (a peer never
holds a worker stream). The forwarded-* headers are believed only together with the peer token: from
anyone else they are ignored, so a caller cannot pose as another principal or as a replica. The peer
token is read at start (changing it needs a rolling restart of every replica).

The check runs before a request is decoded (:meth:`Authenticator.guard`, called by
:mod:`sessiond.server.decoding` for every method). The principal reaches the servicer through a
context variable (:func:`current`); what a principal may see is decided where the data is (the
core's :class:`~sessiond.core.model.Viewer`), not here.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sessiond.config import ServerConfig, valid_token
from sessiond.core.errors import PermissionDeniedError, UnauthenticatedError
from sessiond.core.model import Viewer
from sessiond.core.names import name_problem

SERVICE_PREFIX = "/sessiond.v1.SessionService/"
WORKER_METHOD = SERVICE_PREFIX + "WorkerHeartbeat"
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"
FORWARDED_BY = "sessiond-forwarded-by"
"""Metadata of a call one replica forwards to another: the forwarding replica's id."""
FORWARDED_FOR = "sessiond-forwarded-for"
"""Metadata of a forwarded call: the name of the principal the forwarding replica authenticated."""
FORWARDED_ROLES = "sessiond-forwarded-roles"
"""Metadata of a forwarded call: that principal's roles, comma-separated."""

Context = grpc.aio.ServicerContext[Any, Any]
K = TypeVar("K")


class Role(enum.Enum):
    """What a principal may do."""

    WORKER = "worker"
    CALLER = "caller"
    OPERATOR = "operator"


ALL_ROLES = frozenset(Role)
CALLER_SIDE = frozenset({Role.CALLER, Role.OPERATOR})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated name and its roles. The anonymous principal's name is ``""``."""

    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    # What the core needs to know to decide which sessions this principal may see (built once:
    # every RPC on a session asks for it).
    viewer: Viewer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "viewer", Viewer(self.name, sees_all=Role.OPERATOR in self.roles))

    def describe(self) -> str:
        """For messages: ``principal 'team-a' (caller)``."""
        roles = ",".join(sorted(r.value for r in self.roles)) or "no roles"
        return f"principal {self.name!r} ({roles})" if self.name else f"an anonymous request ({roles})"


# No credential configured anywhere: everything is open, as sessiond always was without tokens.
OPEN = Principal("", ALL_ROLES)
_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("sessiond_principal", default=OPEN)
_FORWARDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("sessiond_forwarder", default=None)


def current() -> Principal:
    """The principal of the RPC being served (set by :meth:`Authenticator.guard`)."""
    return _CURRENT.get()


def forwarder() -> str | None:
    """The replica that forwarded the RPC being served, proven by the peer token (None: a call
    from a caller, or no peer token configured; see :meth:`Authenticator.guard`)."""
    return _FORWARDER.get()


def peer_token(config: ServerConfig) -> str | None:
    """The peer token replicas present to each other (from ``peer_token`` or ``peer_token_file``)."""
    if config.peer_token_file is not None:
        value = read_secret(config.peer_token_file, "peer_token_file")
        if not valid_token(value):
            raise CredentialsError(f"peer_token_file {config.peer_token_file}: a token must be visible ASCII "
                                   "without spaces")
        return value
    return config.peer_token


def forwarded_for(principal: Principal) -> list[tuple[str, str]]:
    """The metadata naming ``principal`` on a call a replica forwards (with the peer token)."""
    return [(FORWARDED_FOR, principal.name),
            (FORWARDED_ROLES, ",".join(sorted(r.value for r in principal.roles & CALLER_SIDE)))]


class CredentialsError(Exception):
    """A credential file or setting cannot be used; the message says which and why, in one line."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """One immutable snapshot of every credential; a reload builds a new one and swaps it in."""

    tokens: Mapping[bytes, Principal]  # SHA-256 of the token -> principal
    certificates: Mapping[str, Principal]  # certificate identity -> principal

    def granted(self) -> frozenset[Role]:
        """Every role some credential grants."""
        roles: set[Role] = set()
        for principal in (*self.tokens.values(), *self.certificates.values()):
            roles |= principal.roles
        return frozenset(roles)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _roles(text: str, where: str) -> frozenset[Role]:
    roles = set()
    for part in text.split(","):
        try:
            roles.add(Role(part.strip().lower()))
        except ValueError:
            raise CredentialsError(f"{where}: unknown role {part.strip()!r} (worker, caller, operator)") from None
    return frozenset(roles)


def _principal_name(name: str, where: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise CredentialsError(f"{where}: the principal {problem}")
    return name


def _lines(path: Path, setting: str) -> Iterable[tuple[str, list[str]]]:
    """(``file:line``, fields) of each non-blank, non-comment line of a credential file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialsError(f"{setting} {path}: {reason}") from None
    # Lines end at \n only, fields are separated by spaces and tabs only: any other control or
    # separator character stays inside its field, where the name rules refuse it.
    for number, line in enumerate(text.split("\n"), 1):
        content = line.split("#", 1)[0].strip(" \t\r")
        if content:
            yield f"{setting} {path}:{number}", re.split(r"[ \t]+", content)


def _table(path: Path, setting: str, form: str, entry: Callable[[list[str], str], tuple[K, Principal]],
           named: Callable[[K], str], empty: str) -> dict[K, Principal]:
    """A credential file of one ``form`` per line, as key -> principal (``entry`` reads a line's
    fields); a key listed twice, a line of the wrong shape or no entry at all is an error."""
    out: dict[K, Principal] = {}
    width = len(form.split())
    for where, fields in _lines(path, setting):
        if len(fields) != width:
            raise CredentialsError(f"{where}: expected {form!r}, got {len(fields)} fields")
        key, principal = entry(fields, where)
        if key in out:
            raise CredentialsError(f"{where}: {named(key)} is listed twice")
        out[key] = principal
    if not out:
        raise CredentialsError(f"{setting} {path}: {empty}")
    return out


def _token_entry(fields: list[str], where: str) -> tuple[bytes, Principal]:
    token, name, roles = fields
    if token.lower().startswith("sha256:"):
        try:
            digest = bytes.fromhex(token[7:])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise CredentialsError(f"{where}: sha256: must be followed by 64 hex digits")
    elif valid_token(token):
        digest = _digest(token)
    else:
        raise CredentialsError(f"{where}: a token must be visible ASCII without spaces")
    return digest, Principal(_principal_name(name, where), _roles(roles, where))


def _identity_entry(fields: list[str], where: str) -> tuple[str, Principal]:
    identity, roles = fields
    return identity, Principal(_principal_name(identity, where), _roles(roles, where))


def parse_tokens_file(path: Path) -> dict[bytes, Principal]:
    """The ``--tokens-file`` table: token digest -> principal. Raises :class:`CredentialsError`."""
    return _table(path, "tokens_file", "TOKEN PRINCIPAL ROLE[,ROLE...]", _token_entry, lambda _: "this token",
                  "holds no tokens")


def parse_roles_file(path: Path) -> dict[str, Principal]:
    """The ``--tls-client-roles`` table: certificate identity -> principal (named by the identity)."""
    return _table(path, "tls_client_roles", "IDENTITY ROLE[,ROLE...]", _identity_entry, repr,
                  "lists no identities")


def read_secret(path: Path, setting: str) -> str:
    """The first line of a secret file, stripped; a missing, unreadable or empty one is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialsError(f"{setting} {path}: {reason}") from None
    value = lines[0].strip() if lines else ""
    if not value:
        raise CredentialsError(f"{setting} {path}: the first line is empty")
    return value


def load_credentials(config: ServerConfig) -> Credentials:
    """Read every configured credential. Raises :class:`CredentialsError` (one line)."""
    tokens: dict[bytes, Principal] = {}
    simple = (("worker", config.worker_token, config.worker_token_file, frozenset({Role.WORKER})),
              ("caller", config.caller_token, config.caller_token_file, CALLER_SIDE))
    for name, value, path, roles in simple:
        if path is not None:
            value = read_secret(path, f"{name}_token_file")
            if not valid_token(value):
                raise CredentialsError(f"{name}_token_file {path}: a token must be visible ASCII without spaces")
        if value is not None:
            if _digest(value) in tokens:
                raise CredentialsError("worker_token and caller_token must differ")
            tokens[_digest(value)] = Principal(name, roles)
    if config.tokens_file is not None:
        for digest, principal in parse_tokens_file(config.tokens_file).items():
            if digest in tokens:
                raise CredentialsError(f"tokens_file {config.tokens_file}: holds the worker or caller token too")
            tokens[digest] = principal
    certificates = {} if config.tls_client_roles is None else parse_roles_file(config.tls_client_roles)
    return Credentials(tokens, certificates)


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of ``authorization`` metadata ("" when the header is there but not a bearer token)."""
    for key, value in metadata or ():
        if key == "authorization":
            if not isinstance(value, str):
                return ""
            scheme, _, credential = value.partition(" ")
            return credential.strip() if scheme.lower() == "bearer" else ""
    return None


def certificate_identities(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """A TLS peer's identities, in the order they name a principal: SANs, then the common name."""
    out = []
    for prop in ("x509_subject_alternative_name", "x509_common_name"):
        for value in auth_context.get(prop, ()):
            out.append(value.decode("utf-8", "replace"))
    return out


class Authenticator:
    """Turns a request's credentials into a :class:`Principal`, and checks the method's roles."""

    def __init__(self, config: ServerConfig, credentials: Credentials | None = None) -> None:
        """Args:
            config: where the credentials are, and the reflection mode.
            credentials: already loaded (default: load them now; raises :class:`CredentialsError`).
        """
        self._config = config
        self._credentials = credentials if credentials is not None else load_credentials(config)
        granted = self._credentials.granted()
        # Fixed at start (see the module docstring): the roles anonymous requests get. The caller
        # side is protected as a whole: a token file with callers but no operator must not leave
        # "list and complete everything" open to anyone.
        anonymous = set()
        if Role.WORKER not in granted:
            anonymous.add(Role.WORKER)
        if not granted & CALLER_SIDE:
            anonymous |= CALLER_SIDE
        self.anonymous = Principal("", frozenset(anonymous))
        peer = peer_token(config)
        self._peer = None if peer is None else _digest(peer)
        if self._peer is not None and self._peer in self._credentials.tokens:
            raise CredentialsError("peer_token must differ from every caller and worker token")
        self.enabled = bool(granted) or self._peer is not None

    @property
    def credentials(self) -> Credentials:
        """The snapshot in force."""
        return self._credentials

    @property
    def unprotected(self) -> frozenset[Role]:
        """The roles any request gets without a credential."""
        return self.anonymous.roles

    def reload(self) -> Credentials:
        """Re-read the credential files and swap them in (streams and calls in progress keep going).

        Raises :class:`CredentialsError` and keeps the credentials in force when a file is bad.
        """
        credentials = load_credentials(self._config)
        if self._peer is not None and self._peer in credentials.tokens:
            raise CredentialsError("peer_token must differ from every caller and worker token")
        self._credentials = credentials
        return self._credentials

    # ----------------------------------------------------------------- deciding

    def authenticate(self, bearer: str | None, auth_context: Callable[[], Mapping[str, Iterable[bytes]]] | None,
                     ) -> Principal | None:
        """The principal of a request: its bearer token's, else its certificate's, else anonymous.

        None when a bearer token was presented and is not known (never anonymous then).
        """
        credentials = self._credentials
        if bearer is not None:
            return credentials.tokens.get(_digest(bearer)) if bearer else None
        if credentials.certificates and auth_context is not None:
            for identity in certificate_identities(auth_context()):
                principal = credentials.certificates.get(identity)
                if principal is not None:
                    return principal
        return self.anonymous

    def check(self, method: str, roles: frozenset[Role], principal: Principal | None) -> Principal:
        """``principal`` if it holds one of ``roles``; else UNAUTHENTICATED (no or unknown
        credential) or PERMISSION_DENIED (a known principal without the role)."""
        if principal is not None and principal.roles & roles:
            return principal
        if principal is None:
            raise UnauthenticatedError("invalid bearer token")
        if not principal.name:
            wanted = " or ".join(sorted(r.value for r in roles))
            raise UnauthenticatedError(f"{method.rsplit('/', 1)[-1]} needs credentials of the {wanted} role "
                                       "(a bearer token, or a client certificate sessiond maps to roles)")
        raise PermissionDeniedError(f"{principal.describe()} may not call {method}")

    def roles_for(self, method: str) -> frozenset[Role] | None:
        """The roles that may call ``method`` (None: anyone, no credential looked at)."""
        if method.startswith(HEALTH_PREFIX):
            return None
        if method.startswith(REFLECTION_PREFIX):
            return None if self._config.reflection == "open" else CALLER_SIDE
        if method == WORKER_METHOD:
            return frozenset({Role.WORKER})
        return CALLER_SIDE

    def guard(self, method: str) -> Callable[[Context], None] | None:
        """The check to run before each request of ``method`` is decoded (None: nothing to check).

        It raises UNAUTHENTICATED/PERMISSION_DENIED, or records the principal for :func:`current`.
        """
        roles = self.roles_for(method)
        if roles is None or not self.enabled:
            return None
        check, authenticate, set_current, peer = self.check, self.authenticate, _CURRENT.set, self._peer

        def guard(context: Context) -> None:
            metadata = context.invocation_metadata()
            bearer = _bearer(metadata)
            if peer is not None and bearer and hmac.compare_digest(_digest(bearer), peer):
                forwarder, principal = _forwarded(metadata)
                _FORWARDER.set(forwarder)
                set_current(check(method, roles, principal))
                return
            _FORWARDER.set(None)  # a caller's forwarded-* headers are not believed
            set_current(check(method, roles, authenticate(bearer, context.auth_context)))

        return guard

    def from_bearer(self, header: str | None) -> Principal | None:
        """The principal of an HTTP ``Authorization`` header (the dashboard): anonymous without one,
        None for a header that is not a known bearer token."""
        if header is None:
            return self.anonymous
        return self.authenticate(_bearer((("authorization", header),)), None)


def _forwarded(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, Principal]:
    """The forwarding replica and the caller it vouches for, from a peer-token call's metadata."""
    values = {key: value for key, value in metadata or () if isinstance(value, str)}
    by, name, roles = values.get(FORWARDED_BY), values.get(FORWARDED_FOR), values.get(FORWARDED_ROLES)
    if not by or name is None or roles is None:
        raise UnauthenticatedError("the peer token is only accepted on a call a replica forwards for a caller "
                                   f"({FORWARDED_BY}, {FORWARDED_FOR} and {FORWARDED_ROLES})")
    try:
        granted = _roles(roles, FORWARDED_ROLES) if roles else frozenset()
        principal = Principal(_principal_name(name, FORWARDED_FOR) if name else "", granted & CALLER_SIDE)
    except CredentialsError as exc:
        raise UnauthenticatedError(str(exc)) from None
    return by, principal


__all__ = [
    "FORWARDED_BY",
    "FORWARDED_FOR",
    "FORWARDED_ROLES",
    "OPEN",
    "Authenticator",
    "Credentials",
    "CredentialsError",
    "Principal",
    "Role",
    "current",
    "forwarded_for",
    "forwarder",
    "load_credentials",
    "parse_roles_file",
    "parse_tokens_file",
    "peer_token",
]
