"""Credentials and the authentication decision, without a server: file formats, which roles are
protected, and what a bearer token or a certificate makes of a request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sessiond.config import ServerConfig
from sessiond.core.errors import PermissionDeniedError, UnauthenticatedError
from sessiond.server.auth import (
    CALLER_SIDE,
    Authenticator,
    CredentialsError,
    Principal,
    Role,
    parse_roles_file,
    parse_tokens_file,
)

WORKER = frozenset({Role.WORKER})


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_the_tokens_file_format(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    table = parse_tokens_file(tokens_file(tmp_path, f"""
# comment line
plain-secret   team-a   caller          # trailing comment
\tsha256:{digest.upper()}\tops\toperator,caller
w-secret workers WORKER
"""))
    assert table[hashlib.sha256(b"plain-secret").digest()] == Principal("team-a", frozenset({Role.CALLER}))
    assert table[hashlib.sha256(b"hashed-secret").digest()] == Principal("ops", CALLER_SIDE)
    assert table[hashlib.sha256(b"w-secret").digest()].roles == WORKER


@pytest.mark.parametrize(("text", "says"), [
    ("a b", ":1: expected 'TOKEN PRINCIPAL ROLE"),
    ("a b caller extra", "got 4 fields"),
    ("a b root", "unknown role 'root'"),
    ("a b caller,", "unknown role ''"),
    ("sha256:zz b caller", "64 hex digits"),
    ("\n\na b caller\na c caller", ":4: this token is listed twice"),
    ("tok\x7f b caller", "visible ASCII"),
    ("a " + "p" * 300 + " caller", "longer than 256 bytes"),
    ("# only comments", "holds no tokens"),
])
def test_a_bad_tokens_file_says_where_and_why(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(CredentialsError, match=says.replace("[", r"\[").replace("(", r"\(")):
        parse_tokens_file(tokens_file(tmp_path, text))


def test_the_client_roles_file_names_principals_by_certificate_identity(tmp_path: Path) -> None:
    path = tmp_path / "roles"
    path.write_text("spiffe://example/worker  worker\nops.example operator\n")
    assert parse_roles_file(path) == {"spiffe://example/worker": Principal("spiffe://example/worker", WORKER),
                                      "ops.example": Principal("ops.example", frozenset({Role.OPERATOR}))}
    path.write_text("ops.example operator\nops.example caller\n")
    with pytest.raises(CredentialsError, match="listed twice"):
        parse_roles_file(path)


def authenticator(tmp_path: Path, text: str, **config: object) -> Authenticator:
    return Authenticator(ServerConfig(tokens_file=tokens_file(tmp_path, text), **config))  # type: ignore[arg-type]


def test_without_credentials_everything_is_open() -> None:
    auth = Authenticator(ServerConfig())
    assert not auth.enabled and auth.unprotected == frozenset(Role)
    assert auth.guard("/sessiond.v1.SessionService/CreateSession") is None


def test_the_caller_side_is_protected_as_a_whole(tmp_path: Path) -> None:
    """Tokens for callers but none for an operator must not leave the operator role open."""
    auth = authenticator(tmp_path, "t team-a caller\n")
    assert auth.unprotected == WORKER
    assert auth.authenticate(None, None) == Principal("", WORKER)


def test_the_simple_pair_maps_to_fixed_principals() -> None:
    auth = Authenticator(ServerConfig(caller_token="c-tok", worker_token="w-tok"))
    assert auth.authenticate("c-tok", None) == Principal("caller", CALLER_SIDE)
    assert auth.authenticate("w-tok", None) == Principal("worker", WORKER)
    assert auth.unprotected == frozenset()


def test_a_bearer_token_wins_over_the_certificate_and_an_unknown_one_is_never_anonymous(tmp_path: Path) -> None:
    roles = tmp_path / "roles"
    roles.write_text("ops.example operator\n")
    ca = tmp_path / "ca.pem"
    auth = authenticator(tmp_path, "t team-a caller\n", tls_cert=ca, tls_key=ca, tls_client_ca=ca,
                         tls_client_roles=roles)
    cert = {"x509_subject_alternative_name": [b"other.example", b"ops.example"], "x509_common_name": [b"cn"]}
    assert auth.authenticate(None, lambda: cert).name == "ops.example"
    assert auth.authenticate("t", lambda: cert).name == "team-a"
    assert auth.authenticate("nope", lambda: cert) is None
    assert auth.authenticate("", lambda: cert) is None  # "Bearer " with nothing after it
    assert auth.authenticate(None, lambda: {"x509_common_name": [b"unmapped"]}) == auth.anonymous


def test_refusals_tell_unauthenticated_from_permission_denied(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, "t team-a caller\nw workers worker\n")
    method = "/sessiond.v1.SessionService/ListSessions"
    with pytest.raises(UnauthenticatedError):
        auth.check(method, CALLER_SIDE, None)
    with pytest.raises(UnauthenticatedError):
        auth.check(method, CALLER_SIDE, auth.anonymous)
    with pytest.raises(PermissionDeniedError, match="workers"):
        auth.check(method, CALLER_SIDE, auth.authenticate("w", None))
    assert auth.check(method, CALLER_SIDE, auth.authenticate("t", None)).name == "team-a"


def test_a_reload_swaps_the_tokens_and_a_bad_file_keeps_the_old_ones(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, "old team-a caller\n")
    (tmp_path / "tokens").write_text("new team-a caller\n")
    auth.reload()
    assert auth.authenticate("old", None) is None and auth.authenticate("new", None) is not None
    (tmp_path / "tokens").write_text("new team-a superuser\n")
    with pytest.raises(CredentialsError):
        auth.reload()
    assert auth.authenticate("new", None) is not None
    # Which roles need a credential was fixed at start: a reload cannot open the worker role.
    (tmp_path / "tokens").write_text("new team-a caller\n")
    auth.reload()
    assert auth.unprotected == WORKER


def test_health_is_always_open_and_reflection_follows_its_setting(tmp_path: Path) -> None:
    for mode, roles in (("caller", CALLER_SIDE), ("open", None)):
        auth = authenticator(tmp_path, "t team-a caller\n", reflection=mode)
        assert auth.roles_for("/grpc.health.v1.Health/Check") is None
        assert auth.roles_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == roles
        assert auth.roles_for("/sessiond.v1.SessionService/WorkerHeartbeat") == WORKER


class _Context:
    """The two things the guard reads of a grpc context."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def _peer_authenticator(tmp_path: Path) -> Authenticator:
    return Authenticator(ServerConfig(
        tokens_file=tokens_file(tmp_path, "a-secret team-a caller\nw-secret workers worker\n"),
        store="etcd://127.0.0.1:2379/t", advertise="127.0.0.1:1", peer_token="peer-secret"))


def _guarded(auth: Authenticator, method: str, *metadata: tuple[str, str]) -> tuple[Principal, str | None]:
    """Run the guard in a fresh context (as grpc runs each call) and return what it decided."""
    import contextvars

    from sessiond.server import auth as module

    def run() -> tuple[Principal, str | None]:
        guard = auth.guard(method)
        assert guard is not None
        guard(_Context(*metadata))  # type: ignore[arg-type]
        return module.current(), module.forwarder()

    return contextvars.copy_context().run(run)


CREATE = "/sessiond.v1.SessionService/CreateSession"
FORWARDED = (("sessiond-forwarded-by", "r1"), ("sessiond-forwarded-for", "team-b"),
             ("sessiond-forwarded-roles", "caller"))


def test_the_peer_token_vouches_for_the_forwarded_caller(tmp_path: Path) -> None:
    auth = _peer_authenticator(tmp_path)
    principal, by = _guarded(auth, CREATE, ("authorization", "Bearer peer-secret"), *FORWARDED)
    assert (principal, by) == (Principal("team-b", frozenset({Role.CALLER})), "r1")


def test_forwarded_headers_without_the_peer_token_are_ignored(tmp_path: Path) -> None:
    auth = _peer_authenticator(tmp_path)
    # A caller that adds the headers is still itself, and is not taken for a replica.
    principal, by = _guarded(auth, CREATE, ("authorization", "Bearer a-secret"), *FORWARDED)
    assert (principal, by) == (Principal("team-a", frozenset({Role.CALLER})), None)
    with pytest.raises(UnauthenticatedError):
        _guarded(auth, CREATE, *FORWARDED)  # anonymous (caller side protected)


def test_the_peer_token_alone_grants_nothing(tmp_path: Path) -> None:
    auth = _peer_authenticator(tmp_path)
    with pytest.raises(UnauthenticatedError, match="only accepted on a call a replica forwards"):
        _guarded(auth, CREATE, ("authorization", "Bearer peer-secret"))
    # Never a worker stream, whatever roles the headers claim.
    with pytest.raises(PermissionDeniedError):
        _guarded(auth, "/sessiond.v1.SessionService/WorkerHeartbeat", ("authorization", "Bearer peer-secret"),
                 ("sessiond-forwarded-by", "r1"), ("sessiond-forwarded-for", "w"),
                 ("sessiond-forwarded-roles", "worker,caller"))
    with pytest.raises(UnauthenticatedError, match="unknown role"):
        _guarded(auth, CREATE, ("authorization", "Bearer peer-secret"), ("sessiond-forwarded-by", "r1"),
                 ("sessiond-forwarded-for", "x"), ("sessiond-forwarded-roles", "root"))


def test_the_peer_token_must_differ_from_every_other_token(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="peer_token must differ"):
        Authenticator(ServerConfig(tokens_file=tokens_file(tmp_path, "peer-secret team-a caller\n"),
                                   store="etcd://127.0.0.1:2379/t", advertise="127.0.0.1:1",
                                   peer_token="peer-secret"))
