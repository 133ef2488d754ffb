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
