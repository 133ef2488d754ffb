"""Replicas that serve TLS with client certificates and bearer tokens (review i12b, 8): a replica
forwards a call over TLS, presenting its own client certificate and the peer token, and vouches for
the caller it authenticated. Every session-scoped call and a create work through a replica that does
not own the worker; a principal never sees another's session through any replica; a caller that adds
the forwarded-* headers itself is neither taken for a replica nor for another principal.

Also here: a WatchSession through a non-owner attends the session (review i12b, 6)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import Replicas, replicas
from tests.cluster.test_replicas import CLOSED, OPEN, QUEUE, Caller, wait_owned
from tests.integration.conftest import error_info
from tests.integration.workers.support import worker_pool
from tests.support.pki import issue, issue_client, make_pki

pytestmark = pytest.mark.asyncio

TOKENS = "a-token team-a caller\nb-token team-b caller\nw-token workers worker\n"
FORGED = (("sessiond-forwarded-by", "some-replica"), ("sessiond-forwarded-for", "team-a"),
          ("sessiond-forwarded-roles", "caller,operator"))


class SecureCaller(Caller):
    """A caller over mTLS with a bearer token (or its certificate alone), and extra metadata."""

    def __init__(self, target: str, pki: Path, token: str | None, *extra: tuple[str, str],
                 cert: str = "client") -> None:
        credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(),
                                                   (pki / f"{cert}.key").read_bytes(),
                                                   (pki / f"{cert}.pem").read_bytes())
        self.target = target
        metadata = ((("authorization", f"Bearer {token}"),) if token else ()) + extra
        self.channel = grpc.aio.secure_channel(
            target, credentials, interceptors=[_Metadata(metadata), _StreamMetadata(metadata)] if metadata else None)
        self.stub = session_service_pb2_grpc.SessionServiceStub(self.channel)


class _Metadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata to every unary call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _with(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(details.method, details.timeout,
                                          (*(details.metadata or ()), *self.metadata),
                                          details.credentials, details.wait_for_ready)

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with(details), request)



class _StreamMetadata(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata to every response-streaming call (grpc.aio files an interceptor under
    its first matching kind only)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.unary = _Metadata(metadata)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self.unary._with(details), request)


def _secure(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    issue(pki, "peer", common_name="sessiond-replica", client=True)
    issue_client(pki, "carol", common_name="carol")
    (tmp_path / "tokens").write_text(TOKENS)
    (tmp_path / "roles").write_text("carol caller\n")
    (tmp_path / "peer-token").write_text("the-peer-token\n")
    flags = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
             "--tls-client-ca", str(pki / "ca.pem"), "--tls-client-roles", str(tmp_path / "roles"),
             "--tokens-file", str(tmp_path / "tokens"), "--peer-token-file", str(tmp_path / "peer-token"),
             "--peer-tls-ca", str(pki / "ca.pem"), "--peer-tls-cert", str(pki / "peer.pem"),
             "--peer-tls-key", str(pki / "peer.key"))
    return pki, flags


def _reason(error: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[grpc.StatusCode, str | None]:
    info = error_info(error.value)
    return error.value.code(), None if info is None else info.reason


async def _watch(caller: Caller, session_id: str, into: list[int]) -> None:
    call = caller.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session_id), timeout=60)
    async for reply in call:
        into.append(reply.session.state)


async def test_forwarding_between_tls_replicas_with_tokens(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, tmp_path: Path) -> None:
    pki, flags = _secure(tmp_path)
    async with replicas(etcd_cluster, 3, *flags) as group, worker_pool() as start:
        owner, second, third = group.targets
        worker = await start(owner, QUEUE, max_sessions=4, worker_id="tls-w", extra=(
            "--auth-token", "w-token", "--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
            "--key", str(pki / "client.key")))
        await wait_owned(group, etcd, worker, owner)
        alice = [SecureCaller(t, pki, "a-token") for t in (second, third)]
        bob = SecureCaller(second, pki, "b-token")
        forging_bob = SecureCaller(third, pki, "b-token", *FORGED)
        forging_alice = SecureCaller(second, pki, "a-token", *FORGED)
        carol = [SecureCaller(t, pki, None, cert="carol") for t in (second, third)]
        try:
            # A create through a replica without the worker is placed by the owner, for team-a.
            session = await alice[0].create()
            sid = session.session_id
            assert (session.worker.worker_id, session.principal) == ("tls-w", "team-a")
            assert (await alice[1].get(sid)).state == OPEN
            assert await alice[1].execute(sid, "echo", "over tls") == "over tls"
            updates: list[int] = []
            watching = asyncio.create_task(_watch(alice[1], sid, updates))
            await eventually(lambda: updates == [OPEN], message="the forwarded watch started")

            # team-b sees nothing of it, through any replica, with or without forged headers.
            for caller in (bob, forging_bob):
                for call in (caller.get(sid), caller.complete(sid), caller.execute(sid, "echo", 1)):
                    with pytest.raises(grpc.aio.AioRpcError) as hidden:
                        await call
                    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND, hidden.value
                with pytest.raises(grpc.aio.AioRpcError) as hidden:
                    await _watch(caller, sid, [])
                assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
            # The forged forwarded-by is not believed: the call is still forwarded to the owner
            # (believed, the replica would not forward it and could not run the activity).
            assert await forging_alice.execute(sid, "echo", "still forwarded") == "still forwarded"
            # The peer token is no caller credential without a forwarded identity.
            peer_only = SecureCaller(second, pki, "the-peer-token")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await peer_only.get(sid)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await peer_only.close()

            assert (await alice[0].complete(sid)).state == CLOSED
            await asyncio.wait_for(watching, 20)
            assert updates == [OPEN, CLOSED]
            again = await alice[1].stub.RecreateSession(session_service_pb2.RecreateSessionRequest(
                recreate_token=session.recreate_token), timeout=20)
            assert again.session.worker.worker_id == "tls-w" and again.session.principal == "team-a"
            assert (await alice[0].complete(again.session.session_id)).state == CLOSED

            # A principal named by its client certificate is vouched for too (its certificate
            # cannot be passed on: only the peer credential makes this work).
            mine = await carol[0].create()
            assert mine.principal == "carol"
            assert (await carol[1].get(mine.session_id)).state == OPEN
            with pytest.raises(grpc.aio.AioRpcError) as hidden_from_bob:
                await bob.get(mine.session_id)
            assert hidden_from_bob.value.code() == grpc.StatusCode.NOT_FOUND
            assert (await carol[1].complete(mine.session_id)).state == CLOSED
        finally:
            for caller in (*alice, bob, forging_bob, forging_alice, *carol):
                await caller.close()


async def test_a_combination_of_settings_not_built_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "tokens").write_text(TOKENS)
    store = "etcd://127.0.0.1:1/x"
    cases = [
        (("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")), "needs peer_tls_ca"),
        (("--tokens-file", str(tmp_path / "tokens")), "needs peer_token or peer_token_file"),
    ]
    for flags, says in cases:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiond", "serve", "--listen", "127.0.0.1:50999", "--store", store, *flags,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 2, err
        assert says in err.decode() and len(err.decode().strip().splitlines()) == 1, err


async def test_a_watch_through_another_replica_attends_the_session(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2, "--caller-timeout", "2s") as group, worker_pool() as start:
        owner, other = group.targets
        worker = await start(owner, QUEUE, max_sessions=2, worker_id="attended")
        await wait_owned(group, etcd, worker, owner)
        caller = Caller(other)
        try:
            watched = await caller.create()
            unwatched = await caller.create()
            updates: list[int] = []
            watching = asyncio.create_task(_watch(caller, watched.session_id, updates))
            # The unattended one fails CALLER_LOST after 2 s (the control: the timeout is on) ...
            stored = await eventually(lambda: _failed(group, etcd, unwatched.session_id), timeout=20,
                                      message="the unattended session failed")
            assert stored.failure.cause == session_pb2.FAILURE_CAUSE_CALLER_LOST
            # ... while the watched one, created at the same time, is OPEN: the remote watch attends it.
            assert (await caller.get(watched.session_id)).state == OPEN
            assert updates == [OPEN] and not watching.done()
            assert (await caller.complete(watched.session_id)).state == CLOSED
            await asyncio.wait_for(watching, 20)
            assert updates == [OPEN, CLOSED]
        finally:
            await caller.close()


async def _failed(group: Replicas, etcd: EtcdClient, session_id: str) -> session_pb2.Session | None:
    stored = await group.stored(etcd, session_id)
    return stored if stored is not None and stored.state == session_pb2.SESSION_STATE_FAILED else None
