"""The typed client and an in-process SessionWorker against a server with bearer tokens, TLS and mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client import (
    PermissionDeniedError,
    RPCError,
    SessionClient,
    SessionNotFoundError,
    SessionWorker,
    UnauthenticatedError,
    activity,
)

from sessiond.config import ServerConfig
from sessiond.server import create_server
from tests.integration.conftest import ServerFactory
from tests.integration.workers.support import poll, workers_of
from tests.support.pki import issue_client, make_pki

pytestmark = pytest.mark.asyncio

QUEUE = "secure-q"
WORKER_TOKEN = "worker-secret"
CALLER_TOKEN = "caller-secret"


async def where_am_i() -> dict[str, Any]:
    info = activity.info()
    return {"session_id": info.session_id, "worker_id": info.worker_id}


@pytest_asyncio.fixture
async def running_workers() -> AsyncIterator[list[tuple[SessionWorker, asyncio.Task[None]]]]:
    """In-process workers started by a test; shut down (and awaited) at teardown."""
    started: list[tuple[SessionWorker, asyncio.Task[None]]] = []
    yield started
    for worker, _ in started:
        worker.shutdown(drain=False)
    await asyncio.gather(*(task for _, task in started), return_exceptions=True)


def run(worker: SessionWorker, started: list[tuple[SessionWorker, asyncio.Task[None]]]) -> asyncio.Task[None]:
    task = asyncio.create_task(worker.run())
    started.append((worker, task))
    return task


async def test_bearer_tokens_by_role(
    make_server: ServerFactory, running_workers: list[tuple[SessionWorker, asyncio.Task[None]]]
) -> None:
    server = await make_server(worker_token=WORKER_TOKEN, caller_token=CALLER_TOKEN)

    async with SessionClient(server.target, auth_token="wrong") as stranger:
        with pytest.raises(UnauthenticatedError):
            await stranger.get_session_info("s")
    async with SessionClient(server.target) as anonymous:
        with pytest.raises(UnauthenticatedError):
            [w async for w in anonymous.list_workers()]
    async with SessionClient(server.target, auth_token=WORKER_TOKEN) as wrong_role:
        with pytest.raises(PermissionDeniedError):
            [w async for w in wrong_role.list_workers()]

    # A worker with a bad token stops at once: no reconnect can fix it.
    rejected = run(SessionWorker(server.target, QUEUE, [where_am_i], auth_token="wrong"), running_workers)
    with pytest.raises(UnauthenticatedError):
        await asyncio.wait_for(rejected, 10)
    caller_role = run(SessionWorker(server.target, QUEUE, [where_am_i], auth_token=CALLER_TOKEN), running_workers)
    with pytest.raises(PermissionDeniedError):
        await asyncio.wait_for(caller_role, 10)

    worker = SessionWorker(server.target, QUEUE, [where_am_i], auth_token=WORKER_TOKEN)
    run(worker, running_workers)
    worker_id = await asyncio.wait_for(worker.wait_registered(), 10)
    async with await SessionClient.connect(server.target, auth_token=CALLER_TOKEN) as client:
        async with client.create_session(QUEUE, creation_timeout=10) as session:
            assert await session.execute_activity(where_am_i) == {"session_id": session.id, "worker_id": worker_id}
            assert session.id in worker.held_sessions


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path)


async def test_tls_and_mutual_tls(
    make_server: ServerFactory, pki: Path, running_workers: list[tuple[SessionWorker, asyncio.Task[None]]]
) -> None:
    server = await make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    target = f"localhost:{server.port}"
    roots = (pki / "ca.pem").read_bytes()
    key, chain = (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()

    # Without a client certificate the TLS handshake fails: the channel never becomes ready.
    with pytest.raises(RPCError) as refused:
        await SessionClient.connect(target, root_certificates=roots, default_rpc_timeout=1)
    assert refused.value.code is not None and refused.value.code.name == "UNAVAILABLE"

    worker = SessionWorker(
        target, QUEUE, [where_am_i], root_certificates=roots, private_key=key, certificate_chain=chain
    )
    run(worker, running_workers)
    worker_id = await asyncio.wait_for(worker.wait_registered(), 10)
    async with await SessionClient.connect(
        target, root_certificates=roots, private_key=key, certificate_chain=chain
    ) as client:
        await poll(lambda: _has_worker(client, worker_id), what="worker listed")
        async with client.create_session(QUEUE, creation_timeout=10) as session:
            assert (await session.execute_activity("where_am_i"))["worker_id"] == worker_id


async def _has_worker(client: SessionClient, worker_id: str) -> bool:
    return worker_id in await workers_of(client, QUEUE)


async def test_client_certificates_name_principals_and_token_files_are_read_by_client_and_worker(
    make_server: ServerFactory, pki: Path, tmp_path: Path,
    running_workers: list[tuple[SessionWorker, asyncio.Task[None]]],
) -> None:
    """mTLS certificates mapped to roles for the worker and one caller; a token file for another
    caller; each sees only its own sessions, and the worker shows the principal that registered it."""
    (tmp_path / "roles").write_text("worker.example worker\nteam-a.example caller\n")
    (tmp_path / "tokens").write_text("team-b-token team-b caller\n")
    (tmp_path / "team-b.token").write_text("team-b-token\n")
    server = await make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
                               tls_client_roles=tmp_path / "roles", tokens_file=tmp_path / "tokens")
    target = f"localhost:{server.port}"
    roots = (pki / "ca.pem").read_bytes()
    worker_chain, worker_key = issue_client(pki, "w", san="DNS:worker.example")
    a_chain, a_key = issue_client(pki, "a", san="DNS:team-a.example")

    worker = SessionWorker(target, QUEUE, [where_am_i], root_certificates=roots, private_key=worker_key,
                           certificate_chain=worker_chain)
    run(worker, running_workers)
    await asyncio.wait_for(worker.wait_registered(), 10)
    client_chain, client_key = (pki / "client.pem").read_bytes(), (pki / "client.key").read_bytes()
    async with await SessionClient.connect(target, root_certificates=roots, private_key=a_key,
                                           certificate_chain=a_chain) as team_a, \
            await SessionClient.connect(target, root_certificates=roots, private_key=client_key,
                                        certificate_chain=client_chain,
                                        auth_token_file=tmp_path / "team-b.token") as team_b:
        [listed] = [w async for w in team_a.list_workers(task_queue=QUEUE)]
        assert listed.principal == "worker.example"
        async with team_a.create_session(QUEUE, creation_timeout=10) as mine:
            assert mine.info.principal == "team-a.example"
            assert (await mine.execute_activity(where_am_i))["session_id"] == mine.id
            assert [s.session_id async for s in team_b.list_sessions()] == []
            with pytest.raises(SessionNotFoundError):
                await team_b.get_session_info(mine.id)


async def test_a_worker_reads_its_token_file_again_at_every_reconnect(
    make_server: ServerFactory, tmp_path: Path, running_workers: list[tuple[SessionWorker, asyncio.Task[None]]],
) -> None:
    tokens, token_file = tmp_path / "tokens", tmp_path / "worker.token"
    tokens.write_text("first-token workers worker\ncaller-token team caller\n")
    token_file.write_text("first-token\n")
    first = await make_server(tokens_file=tokens)
    worker = SessionWorker(first.target, QUEUE, [where_am_i], auth_token_file=token_file, reconnect_max_delay=0.2)
    run(worker, running_workers)
    await asyncio.wait_for(worker.wait_registered(), 10)
    # Rotate while the server restarts: it comes back knowing only the new token, which the
    # worker's file now holds. The worker reconnects with it (a stale token would stop it for good).
    tokens.write_text("second-token workers worker\ncaller-token team caller\n")
    token_file.write_text("second-token\n")
    await first.server.stop(0)
    second, _ = await create_server(ServerConfig(listen=first.target, tokens_file=tokens,
                                                 recovery_window=timedelta(0)))
    await second.start()
    try:
        async with await SessionClient.connect(first.target, auth_token="caller-token") as client:
            async with client.create_session(QUEUE, creation_timeout=10) as session:
                assert (await session.execute_activity(where_am_i))["session_id"] == session.id
    finally:
        await second.stop(0)


async def test_a_token_and_a_token_file_together_or_a_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("tok\n")
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValueError, match="not both"):
        SessionWorker("127.0.0.1:1", QUEUE, [where_am_i], auth_token="x", auth_token_file=tmp_path / "t")
    with pytest.raises(ValueError, match="auth_token_file"):
        SessionWorker("127.0.0.1:1", QUEUE, [where_am_i], auth_token_file=tmp_path / "missing")
    with pytest.raises(ValueError, match="first line is empty"):
        SessionWorker("127.0.0.1:1", QUEUE, [where_am_i], auth_token_file=tmp_path / "blank")
