"""The typed client and an in-process SessionWorker against a server with bearer tokens, TLS and mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client import (
    PermissionDeniedError,
    RPCError,
    SessionClient,
    SessionWorker,
    UnauthenticatedError,
    activity,
)

from tests.integration.conftest import ServerFactory
from tests.integration.workers.support import poll, workers_of
from tests.support.pki import make_pki

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
