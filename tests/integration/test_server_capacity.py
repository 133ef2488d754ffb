"""Capacity and waiting: the hard per-worker limit, FIFO waiters, creation timeouts, cancelled waiters."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from sessiond_client.api.v1 import session_service_pb2

from tests.integration.conftest import (
    OPEN,
    QUEUE,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
    rpc_error,
)


@pytest.mark.asyncio
async def test_a_capacity_one_worker_never_holds_two_sessions_under_50_concurrent_creates(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=1)
    holding = 0
    most_holding = 0

    async def caller() -> str:
        nonlocal holding, most_holding
        session = await sessiond.create(QUEUE, options=options(creation=30))
        holding += 1
        most_holding = max(most_holding, holding)
        try:
            # While this caller holds the slot, every view agrees it is the only open session.
            assert [s.session_id for s in await sessiond.sessions(state=OPEN)] == [session.session_id]
            assert (await sessiond.workers())["w1"].open_sessions == 1
            reply = await sessiond.execute(session.session_id, "record")
            assert json.loads(reply.result.data) == "w1"
            # The task came after SessionStarted on the same stream: the worker's own view.
            assert worker.held == {session.session_id}
        finally:
            holding -= 1
            await sessiond.complete(session.session_id)
        return session.session_id

    ids = await asyncio.gather(*(caller() for _ in range(50)))

    assert most_holding == 1
    assert worker.max_held == 1
    assert len(set(ids)) == 50 and set(worker.started) == set(ids)
    assert worker.rejected == []


@pytest.mark.asyncio
async def test_waiters_are_served_in_fifo_order_as_slots_free(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    served: list[int] = []

    async def caller(index: int) -> None:
        session = await sessiond.create(QUEUE, options=options(creation=30))
        served.append(index)
        await sessiond.complete(session.session_id)

    callers = []
    for index in range(10):
        callers.append(asyncio.create_task(caller(index)))
        # Start the next caller only once this one is queued, so arrival order is known.
        await eventually(lambda n=index + 1: sessiond.waiting == n)

    await sessiond.complete(held.session_id)
    await asyncio.gather(*callers)

    assert served == list(range(10))


@pytest.mark.asyncio
async def test_a_waiter_past_creation_timeout_gets_creation_timeout(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    loop = asyncio.get_running_loop()
    started = loop.time()

    await rpc_error(sessiond.create(QUEUE, options=options(creation=0.3)),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "CREATION_TIMEOUT")

    assert loop.time() - started >= 0.3
    assert sessiond.waiting == 0
    assert [s.session_id for s in await sessiond.sessions()] == [held.session_id]


@pytest.mark.asyncio
async def test_zero_creation_timeout_on_a_full_worker_is_no_capacity(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    await sessiond.create(QUEUE)

    await rpc_error(sessiond.create(QUEUE, options=options(creation=0)),
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_CAPACITY")
    # No worker at all is the same: nothing to wait for when told not to wait.
    await rpc_error(sessiond.create("empty-queue", options=options(creation=0)),
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_CAPACITY")
    assert sessiond.waiting == 0


@pytest.mark.asyncio
async def test_a_caller_that_cancels_while_waiting_takes_no_slot(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    call = sessiond.stub.CreateSession(session_service_pb2.CreateSessionRequest(
        task_queue=QUEUE, owner="quitter", options=options(creation=30)))
    await eventually(lambda: sessiond.waiting == 1)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: sessiond.waiting == 0, message="the server dropped the cancelled waiter")
    await sessiond.complete(held.session_id)

    after = await sessiond.create(QUEUE, options=options(creation=0))
    assert after.state == OPEN and after.worker.worker_id == "w1"
    assert {s.session_id for s in await sessiond.sessions()} == {held.session_id, after.session_id}
    # The cancelled caller's owner claim went with it.
    await sessiond.complete(after.session_id)
    assert (await sessiond.create(QUEUE, owner="quitter", options=options(creation=0))).state == OPEN


@pytest.mark.asyncio
async def test_creation_timeout_is_bounded_by_the_rpc_deadline(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    held = await sessiond.create(QUEUE)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessiond.create(QUEUE, options=options(creation=60), timeout=0.5)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert loop.time() - started < 5
    await eventually(lambda: sessiond.waiting == 0)
    assert [s.session_id for s in await sessiond.sessions()] == [held.session_id]


@pytest.mark.asyncio
async def test_a_waiting_create_is_placed_on_a_worker_that_registers_later(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    pending = asyncio.create_task(sessiond.create(QUEUE, options=options(creation=30)))
    await eventually(lambda: sessiond.waiting == 1)

    worker = await make_worker("late", host_name="late-host")

    session = await pending
    assert session.worker.worker_id == "late" and session.worker.host_name == "late-host"
    await eventually(lambda: session.session_id in worker.held)


@pytest.mark.asyncio
async def test_placement_picks_the_worker_with_the_most_free_slots(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("small", capacity=1)
    await make_worker("big", capacity=3)

    placed = [(await sessiond.create(QUEUE)).worker.worker_id for _ in range(4)]

    # big (3 free) > small (1 free); then big (2) > small (1); then a tie, then whichever is left.
    assert placed[:2] == ["big", "big"]
    assert sorted(placed) == ["big", "big", "big", "small"]
    workers = await sessiond.workers()
    assert (workers["big"].open_sessions, workers["small"].open_sessions) == (3, 1)
