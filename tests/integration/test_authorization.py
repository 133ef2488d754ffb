"""Who may call what, over real TLS and mTLS: every RPC × {no credential, wrong token, worker,
caller A, caller B, operator}, with the status code each must get.

Principals come from a tokens file (bearer tokens over TLS) or from client certificates mapped to
roles (mTLS). Sessions belong to their creator: another caller gets NOT_FOUND, exactly as for an
id that does not exist; an operator sees and completes everything but runs no activity in another
principal's session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sessiond_client.api.v1 import session_service_pb2, session_service_pb2_grpc, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core.model import WorkerKey
from sessiond.core.token import Signer, TokenKeys
from sessiond.server import SessiondServer, create_server
from tests.integration.conftest import error_info, eventually, options, rpc_error
from tests.integration.rawworker import RawWorker, json_payload
from tests.support.pki import issue, issue_client, make_pki

pytestmark = pytest.mark.asyncio

QUEUE = "q"
OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
IDENTITIES = ("none", "wrong", "worker", "caller_a", "caller_b", "operator")

# Every RPC, and what each identity gets (in IDENTITIES order). The sessions named are caller A's.
EXPECTED: dict[str, tuple[grpc.StatusCode, ...]] = {
    "CreateSession":     (UNAUTH, UNAUTH, DENIED, OK, OK, OK),
    "RecreateSession":   (UNAUTH, UNAUTH, DENIED, OK, OK, OK),  # the token is A's; the new session is B's own
    "GetSessionInfo":    (UNAUTH, UNAUTH, DENIED, OK, NOT_FOUND, OK),
    "CompleteSession":   (UNAUTH, UNAUTH, DENIED, OK, NOT_FOUND, OK),
    "ExecuteActivity":   (UNAUTH, UNAUTH, DENIED, OK, NOT_FOUND, DENIED),
    "WatchSession":      (UNAUTH, UNAUTH, DENIED, OK, NOT_FOUND, OK),
    "ListSessions":      (UNAUTH, UNAUTH, DENIED, OK, OK, OK),
    "ListWorkers":       (UNAUTH, UNAUTH, DENIED, OK, OK, OK),
    "WorkerHeartbeat":   (UNAUTH, UNAUTH, OK, DENIED, DENIED, DENIED),
    "Health/Check":      (OK, OK, OK, OK, OK, OK),
    "Reflection":        (UNAUTH, UNAUTH, DENIED, OK, OK, OK),
}  # fmt: skip

TOKENS = {"worker": "tok-worker-0123", "caller_a": "tok-team-a-0123", "caller_b": "tok-team-b-0123",
          "operator": "tok-operator-0123", "worker_b": "tok-workers-b-0123"}
TOKENS_FILE = f"""\
# token                      principal   roles
{TOKENS["worker"]}            workers-a   worker
{TOKENS["worker_b"]}          workers-b   worker
{TOKENS["caller_a"]}          team-a      caller
{TOKENS["caller_b"]}          team-b      caller
{TOKENS["operator"]}          ops         operator
"""
ROLES_FILE = """\
worker.example               worker
spiffe://example/team-a      caller
team-b                       caller
ops.example                  operator,caller
"""
KEY = "k" * 40


@dataclass
class Identity:
    """How one identity reaches the server: its channel and call metadata."""

    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...] = ()
    credentials: grpc.ChannelCredentials | None = None

    @property
    def stub(self) -> session_service_pb2_grpc.SessionServiceStub:
        return session_service_pb2_grpc.SessionServiceStub(self.channel)


@dataclass
class Setup:
    """A running server, its identities, and a worker registered as ``workers-a``/``worker.example``."""

    server: SessiondServer
    target: str
    who: dict[str, Identity]
    worker: RawWorker | None = None
    probes: int = 0
    closing: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = make_pki(tmp_path_factory.mktemp("authz-pki"))
    (directory / "tokens").write_text(TOKENS_FILE)
    (directory / "roles").write_text(ROLES_FILE)
    (directory / "key").write_text(KEY + "\n")
    issue(directory, "other-ca", ca=True)
    return directory


def _root(pki: Path) -> bytes:
    return (pki / "ca.pem").read_bytes()


async def _start(config: ServerConfig) -> tuple[SessiondServer, str]:
    """Start a server. Its recovery window (if any) makes an unknown id RECOVERING rather than
    NOT_FOUND, for another principal's session exactly as for a made-up one."""
    server, port = await create_server(config)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def tokens_over_tls(pki: Path) -> AsyncIterator[Setup]:
    """TLS, principals from the tokens file."""
    server, target = await _start(ServerConfig(
        listen="127.0.0.1:0", tls_cert=pki / "server.pem", tls_key=pki / "server.key", tokens_file=pki / "tokens",
        token_key_file=pki / "key", recovery_window=timedelta(0)))
    credentials = grpc.ssl_channel_credentials(root_certificates=_root(pki))
    channel = grpc.aio.secure_channel(target, credentials)
    who = {"none": Identity(channel), "wrong": Identity(channel, (("authorization", "Bearer tok-wrong"),))}
    for name in ("worker", "caller_a", "caller_b", "operator"):
        who[name] = Identity(channel, (("authorization", f"Bearer {TOKENS[name]}"),), credentials)
    setup = Setup(server, target, who, closing=[channel])
    yield setup
    await _teardown(setup)


@pytest_asyncio.fixture
async def certificates_over_mtls(pki: Path) -> AsyncIterator[Setup]:
    """mTLS, principals from client certificates mapped to roles."""
    server, target = await _start(ServerConfig(
        listen="127.0.0.1:0", tls_cert=pki / "server.pem", tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem", tls_client_roles=pki / "roles", token_key_file=pki / "key",
        recovery_window=timedelta(0)))
    certificates = {
        "none": issue_client(pki, "stranger"),  # signed by the CA, but mapped to no role
        "worker": issue_client(pki, "cert-worker", common_name="ignored-cn", san="DNS:worker.example"),
        "caller_a": issue_client(pki, "cert-a", san="URI:spiffe://example/team-a"),
        "caller_b": issue_client(pki, "cert-b", common_name="team-b"),  # no SAN: the CN names it
        "operator": issue_client(pki, "cert-ops", san="DNS:unmapped.example,DNS:ops.example"),
    }
    certificates["wrong"] = certificates["none"]
    who: dict[str, Identity] = {}
    channels = []
    for name, (chain, key) in certificates.items():
        credentials = grpc.ssl_channel_credentials(root_certificates=_root(pki), private_key=key,
                                                   certificate_chain=chain)
        channel = grpc.aio.secure_channel(target, credentials)
        channels.append(channel)
        metadata = (("authorization", "Bearer tok-wrong"),) if name == "wrong" else ()
        who[name] = Identity(channel, metadata, credentials)
    setup = Setup(server, target, who, closing=channels)
    yield setup
    await _teardown(setup)


async def _teardown(setup: Setup) -> None:
    if setup.worker is not None:
        await setup.worker.stop()
    for channel in setup.closing:
        await channel.close()
    await setup.server.stop(0)


async def _worker(setup: Setup, name: str = "worker", worker_id: str = "w1", capacity: int = 100) -> RawWorker:
    identity = setup.who[name]
    worker = RawWorker(setup.target, QUEUE, worker_id=worker_id, capacity=capacity, metadata=identity.metadata,
                       credentials=identity.credentials)
    return await worker.start()


async def _create(identity: Identity, **fields: Any) -> Any:
    reply = await identity.stub.CreateSession(session_service_pb2.CreateSessionRequest(
        task_queue=QUEUE, options=options(creation=5), **fields), metadata=identity.metadata, timeout=10)
    return reply.session


# --------------------------------------------------------------------- the calls


Call = Callable[[Setup, Identity], Awaitable[Any]]


async def _watch(setup: Setup, who: Identity, session_id: str) -> None:
    call = who.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session_id),
                                 metadata=who.metadata, timeout=10)
    try:
        async for _ in call:
            return
    finally:
        call.cancel()


async def _heartbeat(setup: Setup, who: Identity) -> None:
    setup.probes += 1
    register = worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
        task_queue="probe-q", worker_id=f"probe-{setup.probes}"))

    async def requests() -> AsyncIterator[worker_pb2.WorkerHeartbeatRequest]:
        yield register  # then stay open (no half-close) until the call is cancelled
        await asyncio.Event().wait()

    # An iterator, not call.write(): see _reflect.
    call = who.stub.WorkerHeartbeat(requests(), metadata=who.metadata, timeout=10)
    try:
        reply = await call.read()
        if reply is grpc.aio.EOF:
            await call  # raises the status the stream ended with
        assert reply.HasField("registered")
    finally:
        call.cancel()


async def _reflect(setup: Setup, who: Identity) -> None:
    # The request goes in as an iterator, not call.write(): a write racing the server's refusal makes
    # grpc's client record INTERNAL locally instead of the status the server sent.
    call = reflection_pb2_grpc.ServerReflectionStub(who.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=who.metadata, timeout=10)
    try:
        reply = await call.read()
        if reply is grpc.aio.EOF:
            await call
        assert "sessiond.v1.SessionService" in {s.name for s in reply.list_services_response.service}
    finally:
        call.cancel()


def _calls(owned: str, token: bytes, fresh: Callable[[], Awaitable[str]]) -> dict[str, Call]:
    """The RPCs of EXPECTED. ``owned`` is caller A's session; ``fresh()`` gives A a new one to complete."""
    async def complete(setup: Setup, who: Identity) -> None:
        await who.stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=await fresh()),
                                       metadata=who.metadata, timeout=10)

    return {
        "CreateSession": lambda s, who: _create(who),
        "RecreateSession": lambda s, who: who.stub.RecreateSession(session_service_pb2.RecreateSessionRequest(
            recreate_token=token, options=options(creation=5)), metadata=who.metadata, timeout=10),
        "GetSessionInfo": lambda s, who: who.stub.GetSessionInfo(
            session_service_pb2.GetSessionInfoRequest(session_id=owned), metadata=who.metadata, timeout=10),
        "CompleteSession": complete,
        "ExecuteActivity": lambda s, who: who.stub.ExecuteActivity(session_service_pb2.ExecuteActivityRequest(
            session_id=owned, activity_type="echo", input=json_payload("hi")), metadata=who.metadata, timeout=10),
        "WatchSession": lambda s, who: _watch(s, who, owned),
        "ListSessions": lambda s, who: who.stub.ListSessions(session_service_pb2.ListSessionsRequest(),
                                                             metadata=who.metadata, timeout=10),
        "ListWorkers": lambda s, who: who.stub.ListWorkers(session_service_pb2.ListWorkersRequest(),
                                                           metadata=who.metadata, timeout=10),
        "WorkerHeartbeat": _heartbeat,
        "Health/Check": lambda s, who: health_pb2_grpc.HealthStub(who.channel).Check(
            health_pb2.HealthCheckRequest(), metadata=who.metadata, timeout=10),
        "Reflection": _reflect,
    }


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        return error.code(), info.reason if info is not None else ""
    return OK, ""


async def _run_matrix(setup: Setup) -> None:
    setup.worker = await _worker(setup)
    caller_a = setup.who["caller_a"]
    owned = await _create(caller_a)
    calls = _calls(owned.session_id, owned.recreate_token, lambda: _fresh_id(caller_a))
    got: dict[str, tuple[grpc.StatusCode, ...]] = {}
    reasons: dict[tuple[str, str], str] = {}
    for rpc, call in calls.items():
        row = []
        for name in IDENTITIES:
            code, reason = await _outcome(call(setup, setup.who[name]))
            row.append(code)
            reasons[(rpc, name)] = reason
        got[rpc] = tuple(row)
    mismatches = {rpc: {name: f"{g.name} (expected {e.name})" for name, g, e in zip(IDENTITIES, got[rpc],
                                                                                  EXPECTED[rpc], strict=True) if g != e}
                  for rpc in EXPECTED}
    assert not any(mismatches.values()), {rpc: m for rpc, m in mismatches.items() if m}
    # Every refusal names its reason; NOT_FOUND is the plain SESSION_NOT_FOUND of an unknown id.
    for (rpc, name), reason in reasons.items():
        code = got[rpc][IDENTITIES.index(name)]
        if code is not OK:
            assert reason == {UNAUTH: "UNAUTHENTICATED", DENIED: "PERMISSION_DENIED",
                              NOT_FOUND: "SESSION_NOT_FOUND"}[code], (rpc, name, reason)


async def _fresh_id(caller: Identity) -> str:
    return str((await _create(caller)).session_id)


async def test_every_rpc_for_every_identity_with_tokens_over_tls(tokens_over_tls: Setup) -> None:
    await _run_matrix(tokens_over_tls)


async def test_every_rpc_for_every_identity_with_client_certificates_over_mtls(
        certificates_over_mtls: Setup) -> None:
    await _run_matrix(certificates_over_mtls)


async def test_mtls_refuses_a_connection_without_a_certificate_or_with_another_cas(
        certificates_over_mtls: Setup, pki: Path) -> None:
    foreign_chain, foreign_key = issue_client(pki, "foreign", san="DNS:ops.example", issuer="other-ca")
    for credentials in (grpc.ssl_channel_credentials(root_certificates=_root(pki)),
                        grpc.ssl_channel_credentials(root_certificates=_root(pki), private_key=foreign_key,
                                                     certificate_chain=foreign_chain)):
        async with grpc.aio.secure_channel(certificates_over_mtls.target, credentials) as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListWorkers(session_service_pb2.ListWorkersRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------- what each principal sees


async def test_sessions_are_listed_per_principal_and_an_operator_sees_them_all(tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup)
    a, b, ops = setup.who["caller_a"], setup.who["caller_b"], setup.who["operator"]
    mine = {(await _create(a, owner="order-1")).session_id, (await _create(a)).session_id}
    theirs = (await _create(b, owner="order-1")).session_id  # the same owner key: B's own, not blocked by A's

    async def listed(who: Identity, **filters: Any) -> set[str]:
        reply = await who.stub.ListSessions(session_service_pb2.ListSessionsRequest(**filters),
                                            metadata=who.metadata, timeout=10)
        return {s.session_id for s in reply.sessions}

    assert await listed(a) == mine
    assert await listed(b) == {theirs}
    assert await listed(ops) == mine | {theirs}
    assert await listed(ops, principal="team-b") == {theirs}
    assert await listed(a, principal="team-b") == set()  # another principal's: none A may see
    reply = await ops.stub.ListSessions(session_service_pb2.ListSessionsRequest(principal="team-b"),
                                        metadata=ops.metadata)
    assert [s.principal for s in reply.sessions] == ["team-b"]
    workers = await ops.stub.ListWorkers(session_service_pb2.ListWorkersRequest(), metadata=ops.metadata)
    assert {(w.worker_id, w.principal) for w in workers.workers} == {("w1", "workers-a")}


async def test_not_found_for_another_principal_reads_exactly_as_for_an_unknown_id(tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup)
    a, b = setup.who["caller_a"], setup.who["caller_b"]
    owned = (await _create(a)).session_id
    unknown = "00000000-0000-4000-8000-000000000000"
    found = [await rpc_error(b.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=sid),
                                                   metadata=b.metadata), NOT_FOUND, "SESSION_NOT_FOUND")
             for sid in (owned, unknown)]
    (error_owned, info_owned), (error_unknown, info_unknown) = found
    assert error_owned.details().replace(owned, "ID") == error_unknown.details().replace(unknown, "ID")
    assert dict(info_owned.metadata) == {"session_id": owned}
    assert dict(info_unknown.metadata) == {"session_id": unknown}


async def test_an_operator_completes_another_principals_session(tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup)
    a, ops = setup.who["caller_a"], setup.who["operator"]
    owned = await _create(a)
    reply = await ops.stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=owned.session_id),
                                           metadata=ops.metadata)
    assert reply.session.state == 3 and reply.session.principal == "team-a"
    await eventually(lambda: owned.session_id not in setup.worker.held)  # type: ignore[union-attr]


# --------------------------------------------------------------------- worker ids and recreate tokens


async def test_a_worker_id_registered_by_one_principal_is_refused_to_another(tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup)  # w1, as workers-a
    owned = await _create(setup.who["caller_a"])
    impostor = RawWorker(setup.target, QUEUE, worker_id="w1", metadata=(("authorization",
                         f"Bearer {TOKENS['worker_b']}"),), credentials=setup.who["worker"].credentials,
                         instance_id="impostor")
    await impostor.start(wait=False)
    await eventually(lambda: impostor.stream_done.is_set())
    assert impostor.stream_error == DENIED
    # Nothing was displaced: the session is still OPEN on the real w1, which keeps working.
    a = setup.who["caller_a"]
    got = await a.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=owned.session_id),
                                      metadata=a.metadata)
    assert got.session.state == 1 and not setup.worker.stream_done.is_set()
    reply = await a.stub.ExecuteActivity(session_service_pb2.ExecuteActivityRequest(
        session_id=owned.session_id, activity_type="echo", input=json_payload(1)), metadata=a.metadata, timeout=10)
    assert reply.HasField("result")
    await impostor.stop()


def _tampered(token: bytes) -> dict[str, bytes]:
    flipped = bytearray(token)
    flipped[len(token) // 2] ^= 0x04
    return {
        "truncated": token[:-1],
        "bit-flipped": bytes(flipped),
        "re-signed with another key": Signer(TokenKeys(b"x" * 32)).token(WorkerKey(QUEUE, "w1"), "workers-a"),
        "forged (no key)": token[:-32] + bytes(32),
        "unsigned version 1": b"sdrt\x01\x00\x00\x00\x00" + b'{"q":"q","w":"w1"}',
    }


async def test_tampered_recreate_tokens_are_invalid_and_take_no_slot(tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup, capacity=2)
    a = setup.who["caller_a"]
    first = await _create(a)
    for name, token in _tampered(first.recreate_token).items():
        _, info = await rpc_error(a.stub.RecreateSession(session_service_pb2.RecreateSessionRequest(
            recreate_token=token, options=options(creation=5)), metadata=a.metadata, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RECREATE_TOKEN")
        assert info.reason == "INVALID_RECREATE_TOKEN", name
    assert setup.server.engine.table.waiting_count() == 0
    workers = await a.stub.ListWorkers(session_service_pb2.ListWorkersRequest(), metadata=a.metadata)
    assert [w.open_sessions for w in workers.workers] == [1]
    # The genuine token still works.
    again = await a.stub.RecreateSession(session_service_pb2.RecreateSessionRequest(
        recreate_token=first.recreate_token), metadata=a.metadata, timeout=10)
    assert again.session.worker.worker_id == "w1"


async def test_tokens_survive_a_restart_with_the_key_file_and_not_without(pki: Path) -> None:
    keyed = ServerConfig(listen="127.0.0.1:0", tokens_file=pki / "tokens", recovery_window=timedelta(0))
    token = ""
    for round_, key_file in enumerate((pki / "key", pki / "key", None)):
        server, target = await _start(replace(keyed, token_key_file=key_file))
        a = (("authorization", f"Bearer {TOKENS['caller_a']}"),)
        worker = await RawWorker(target, QUEUE, worker_id="w1", capacity=4,
                                 metadata=(("authorization", f"Bearer {TOKENS['worker']}"),)).start()
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = session_service_pb2_grpc.SessionServiceStub(channel)
                if round_ == 0:
                    token = (await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue=QUEUE),
                                                      metadata=a)).session.recreate_token
                request = session_service_pb2.RecreateSessionRequest(recreate_token=token, options=options(creation=5))
                if key_file is not None:
                    assert (await stub.RecreateSession(request, metadata=a)).session.worker.worker_id == "w1"
                else:
                    await rpc_error(stub.RecreateSession(request, metadata=a), grpc.StatusCode.INVALID_ARGUMENT,
                                    "INVALID_RECREATE_TOKEN")
        finally:
            await worker.stop()
            await server.stop(0)


# --------------------------------------------------------------------- signed session records


async def test_a_restarted_server_adopts_only_the_session_records_it_signed(pki: Path) -> None:
    """Issue 9's open point: a worker's report is believed only when it carries the server's
    signature of that record for that worker (a worker cannot make up a session for another
    principal or owner, or claim another worker's)."""
    config = ServerConfig(listen="127.0.0.1:0", tokens_file=pki / "tokens", token_key_file=pki / "key")
    worker_a = (("authorization", f"Bearer {TOKENS['worker']}"),)
    worker_b = (("authorization", f"Bearer {TOKENS['worker_b']}"),)
    a = (("authorization", f"Bearer {TOKENS['caller_a']}"),)
    first, target = await _start(replace(config, recovery_window=timedelta(0)))
    w1 = await RawWorker(target, QUEUE, worker_id="w1", capacity=4, metadata=worker_a).start()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        created = [(await stub.CreateSession(session_service_pb2.CreateSessionRequest(
            task_queue=QUEUE, owner=f"o{i}"), metadata=a)).session for i in range(3)]
    await eventually(lambda: len(w1.records) == 3)
    genuine, for_b, other_owner = (w1.records[s.session_id] for s in created)
    assert genuine.record_signature
    forged_principal = type(for_b)()
    forged_principal.CopyFrom(for_b)
    forged_principal.principal = "team-b"
    forged_owner = type(other_owner)()
    forged_owner.CopyFrom(other_owner)
    forged_owner.owner = "someone-elses-order"
    made_up = type(genuine)()
    made_up.CopyFrom(genuine)
    made_up.session_id = "00000000-0000-4000-8000-00000000abcd"
    held = [genuine, forged_principal, forged_owner, made_up]
    await w1.stop()
    await first.stop(0)

    # retention 0: a worker_id's binding lapses as soon as its stream ends (the thief's, below).
    second, target = await _start(replace(config, recovery_window=timedelta(seconds=30), retention=timedelta(0)))
    try:
        # Another principal's worker reporting A's genuine records under w1 gets none of them.
        thief = await RawWorker(target, QUEUE, worker_id="w1", capacity=4, metadata=worker_b, held=[genuine],
                                held_from="old", instance_id="thief").start()
        assert thief.reattached == []
        await thief.stop()
        # Nor does another worker of A's own principal: the record names w1.
        sibling = await RawWorker(target, QUEUE, worker_id="w2", capacity=4, metadata=worker_a, held=[genuine],
                                  held_from="old", instance_id="sibling").start()
        assert sibling.reattached == []
        await sibling.stop()
        await eventually(lambda: not second.engine.table.registry.workers)
        back = await RawWorker(target, QUEUE, worker_id="w1", capacity=4, metadata=worker_a, held=held,
                               held_from="old", instance_id="real").start()
        assert back.reattached == [genuine.session_id]
        async with grpc.aio.insecure_channel(target) as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            got = await stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(
                session_id=genuine.session_id), metadata=a)
            assert got.session.principal == "team-a" and got.session.owner == "o0"
        await back.stop()
    finally:
        await second.stop(0)


async def test_a_report_that_changes_what_its_session_holds_is_not_adopted(pki: Path) -> None:
    """The signature covers the resources a session holds: a worker cannot report a GPU session as a
    sessions-only one (freeing the GPU for someone else) after a restart."""
    config = ServerConfig(listen="127.0.0.1:0", tokens_file=pki / "tokens", token_key_file=pki / "key")
    worker_a = (("authorization", f"Bearer {TOKENS['worker']}"),)
    a = (("authorization", f"Bearer {TOKENS['caller_a']}"),)
    first, target = await _start(replace(config, recovery_window=timedelta(0)))
    w1 = await RawWorker(target, QUEUE, worker_id="w1", capacity=4, capacities={"gpu": 2}, metadata=worker_a).start()
    asks = options(creation=5)
    asks.resources["gpu"] = 1
    async with grpc.aio.insecure_channel(target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        created = [(await stub.CreateSession(session_service_pb2.CreateSessionRequest(
            task_queue=QUEUE, options=asks), metadata=a)).session for _ in range(2)]
    await eventually(lambda: len(w1.records) == 2)
    genuine, altered = (w1.records[s.session_id] for s in created)
    assert dict(altered.resources) == {"sessions": 1, "gpu": 1}
    del altered.resources["gpu"]
    await w1.stop()
    await first.stop(0)

    second, target = await _start(replace(config, recovery_window=timedelta(seconds=30)))
    try:
        back = await RawWorker(target, QUEUE, worker_id="w1", capacity=4, capacities={"gpu": 2}, metadata=worker_a,
                               held=[genuine, altered], held_from="old", instance_id="back").start()
        assert back.reattached == [genuine.session_id]
        used = second.engine.table.registry.workers[WorkerKey(QUEUE, "w1")].used
        assert (used["sessions"], used["gpu"]) == (1, 1)
        await back.stop()
    finally:
        await second.stop(0)


async def test_session_records_handed_to_workers_are_signed_and_callers_see_no_signature(
        tokens_over_tls: Setup) -> None:
    setup = tokens_over_tls
    setup.worker = await _worker(setup)
    a = setup.who["caller_a"]
    created = await _create(a)
    assert created.record_signature == b""
    await eventually(lambda: created.session_id in setup.worker.records)  # type: ignore[union-attr]
    assert len(setup.worker.records[created.session_id].record_signature) == 32  # type: ignore[union-attr]


async def test_health_needs_no_credential_and_reflection_can_be_open_or_off(pki: Path) -> None:
    for mode in ("open", "off"):
        server, target = await _start(ServerConfig(listen="127.0.0.1:0", tokens_file=pki / "tokens",
                                                   reflection=mode, recovery_window=timedelta(0)))
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                who = Identity(channel)
                code, _ = await _outcome(_reflect(Setup(server, target, {}), who))
                assert code == (OK if mode == "open" else grpc.StatusCode.UNIMPLEMENTED)
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)


async def test_every_rpc_of_the_service_has_a_row_in_the_table() -> None:
    names = {m.name for m in session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].methods}
    assert names <= set(EXPECTED)
    assert all(len(row) == len(IDENTITIES) for row in EXPECTED.values())
