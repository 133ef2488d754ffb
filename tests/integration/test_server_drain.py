"""Goodbye with drain: the worker takes no new sessions and keeps its open ones working."""

from __future__ import annotations

import json

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2

from tests.integration.conftest import (
    CLOSED,
    FAILED,
    OPEN,
    QUEUE,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
    rpc_error,
)


async def _draining(sessiond: Sessiond, worker_id: str) -> bool:
    return (await sessiond.workers())[worker_id].draining


@pytest.mark.asyncio
async def test_a_draining_worker_gets_no_new_sessions_and_keeps_its_open_ones(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    leaving = await make_worker("leaving", capacity=5)
    kept = await sessiond.create(QUEUE)

    await leaving.goodbye(drain=True)
    await eventually(lambda: _draining(sessiond, "leaving"))
    # The server acknowledges in-band, naming the sessions the worker still has to finish.
    await eventually(lambda: leaving.goodbye_acks == [(True, [kept.session_id])])

    # No new sessions: neither a create nor a recreate with its token.
    await rpc_error(sessiond.create(QUEUE, options=options(creation=0)),
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_CAPACITY")
    await rpc_error(sessiond.recreate(kept.recreate_token, options=options(creation=0.2)),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "WORKER_UNAVAILABLE")
    await make_worker("arriving", capacity=5)
    assert (await sessiond.create(QUEUE)).worker.worker_id == "arriving"
    # The open session still works, on the draining worker.
    assert (await sessiond.get(kept.session_id)).state == OPEN
    assert json.loads((await sessiond.execute(kept.session_id, "record")).result.data) == "leaving"
    assert kept.session_id in leaving.held

    await sessiond.complete(kept.session_id)
    assert (await sessiond.get(kept.session_id)).state == CLOSED
    # With nothing left to hold, the worker leaves cleanly.
    leaving.close()
    await eventually(lambda: leaving.stream_done.is_set())
    assert "leaving" not in await sessiond.workers()


@pytest.mark.asyncio
async def test_a_draining_worker_that_leaves_with_sessions_open_fails_them_with_worker_shutdown(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    leaving = await make_worker("leaving", capacity=2)
    session = await sessiond.create(QUEUE)
    await leaving.goodbye(drain=True)
    await eventually(lambda: _draining(sessiond, "leaving"))
    assert (await sessiond.get(session.session_id)).state == OPEN

    leaving.close()

    await eventually(lambda: _failed(sessiond, session.session_id))
    after = await sessiond.get(session.session_id)
    assert after.failure.cause == session_pb2.FAILURE_CAUSE_WORKER_SHUTDOWN


async def _failed(sessiond: Sessiond, session_id: str) -> bool:
    return (await sessiond.get(session_id)).state == FAILED


@pytest.mark.asyncio
async def test_a_goodbye_without_drain_is_acknowledged_after_its_sessions_are_ended(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    leaving = await make_worker("leaving", capacity=2)
    session = await sessiond.create(QUEUE)

    await leaving.goodbye(drain=False)

    await eventually(lambda: leaving.goodbye_acks == [(False, [])])
    # Stream order: the SessionEnded for the failed session came before the acknowledgement.
    assert leaving.ended[session.session_id] == {"state": "SESSION_STATE_FAILED",
                                                 "cause": "FAILURE_CAUSE_WORKER_SHUTDOWN"}
    assert session.session_id not in leaving.held
