"""The ``owner`` rule (one OPEN session per owner) and ``request_id`` idempotency (AIP-155)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sessiond_client.api.v1 import session_service_pb2

from tests.integration.conftest import (
    CLOSED,
    OPEN,
    QUEUE,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
    rpc_error,
)


@pytest.mark.asyncio
async def test_a_second_create_for_the_same_owner_is_refused_until_the_first_completes(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=5)
    first = await sessiond.create(QUEUE, owner="alice")

    _, info = await rpc_error(sessiond.create(QUEUE, owner="alice"),
                              grpc.StatusCode.FAILED_PRECONDITION, "EXISTING_OPEN_SESSION")
    assert info.metadata["owner"] == "alice" and info.metadata["session_id"] == first.session_id
    await rpc_error(sessiond.recreate(first.recreate_token, owner="alice"),
                    grpc.StatusCode.FAILED_PRECONDITION, "EXISTING_OPEN_SESSION")
    assert (await sessiond.create(QUEUE, owner="bob")).state == OPEN  # other owners are unaffected

    await sessiond.complete(first.session_id)

    second = await sessiond.create(QUEUE, owner="alice")
    assert second.state == OPEN and second.owner == "alice" and second.session_id != first.session_id
    assert [s.session_id for s in await sessiond.sessions(owner="alice", state=OPEN)] == [second.session_id]


@pytest.mark.asyncio
async def test_an_owner_waiting_for_a_slot_already_counts_as_holding_one(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    pending = asyncio.create_task(sessiond.create(QUEUE, owner="carol", options=options(creation=30)))
    await eventually(lambda: sessiond.waiting == 1)

    await rpc_error(sessiond.create(QUEUE, owner="carol", options=options(creation=0)),
                    grpc.StatusCode.FAILED_PRECONDITION, "EXISTING_OPEN_SESSION")

    await sessiond.complete(held.session_id)
    assert (await pending).owner == "carol"


@pytest.mark.asyncio
async def test_a_retried_create_with_the_same_request_id_returns_the_same_session_and_takes_no_second_slot(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=1)
    first = await sessiond.create(QUEUE, request_id="req-1", options=options(creation=0))

    retry = await sessiond.create(QUEUE, request_id="req-1", options=options(creation=0))

    assert retry.session_id == first.session_id
    assert (await sessiond.workers())["w1"].open_sessions == 1
    await rpc_error(sessiond.create(QUEUE, request_id="req-2", options=options(creation=0)),
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_CAPACITY")
    await eventually(lambda: worker.started == [first.session_id])
    # Still the same answer once the session has moved on.
    await sessiond.complete(first.session_id)
    late = await sessiond.create(QUEUE, request_id="req-1", options=options(creation=0))
    assert late.session_id == first.session_id and late.state == CLOSED
    assert len(await sessiond.sessions()) == 1


@pytest.mark.asyncio
async def test_retries_of_a_waiting_create_share_one_waiter_and_one_session(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    attempts = [asyncio.create_task(sessiond.create(QUEUE, request_id="req-w", options=options(creation=30)))
                for _ in range(3)]
    await eventually(lambda: sessiond.waiting == 1)

    # One attempt gives up (a client-side timeout, say): the others keep the shared waiter.
    attempts[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempts[0]
    await sessiond.complete(held.session_id)

    placed = await asyncio.gather(*attempts[1:])
    assert placed[0].session_id == placed[1].session_id
    assert placed[0].state == OPEN
    await eventually(lambda: worker.started == [held.session_id, placed[0].session_id])


@pytest.mark.asyncio
async def test_a_retried_recreate_with_the_same_request_id_returns_the_same_session(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=2)
    first = await sessiond.create(QUEUE)
    request = session_service_pb2.RecreateSessionRequest(recreate_token=first.recreate_token, request_id="rr-1")

    one = (await sessiond.stub.RecreateSession(request)).session
    two = (await sessiond.stub.RecreateSession(request)).session

    assert one.session_id == two.session_id != first.session_id
    assert (await sessiond.workers())["w1"].open_sessions == 2
