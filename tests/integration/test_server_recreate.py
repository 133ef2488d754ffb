"""RecreateSession: a token pins new sessions to the worker that made it, and nothing else."""

from __future__ import annotations

import asyncio

import grpc
import pytest

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
async def test_recreate_lands_on_the_same_worker_of_two_with_a_new_session_id_and_the_token_works_twice(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    workers = {w.worker_id: w for w in [await make_worker("a", capacity=5), await make_worker("b", capacity=5)]}
    first = await sessiond.create(QUEUE)
    home = first.worker.worker_id
    (elsewhere,) = set(workers) - {home}

    again = await sessiond.recreate(first.recreate_token)
    twice = await sessiond.recreate(first.recreate_token)

    for session in (again, twice):
        assert session.state == OPEN and session.worker.worker_id == home
        assert session.recreate_token == first.recreate_token  # stable per worker
    assert len({first.session_id, again.session_id, twice.session_id}) == 3
    # A plain create would have gone elsewhere: the other worker has more free slots.
    assert (await sessiond.create(QUEUE)).worker.worker_id == elsewhere
    await eventually(lambda: workers[home].held == {first.session_id, again.session_id, twice.session_id})
    # The token outlives its session.
    await sessiond.complete(first.session_id)
    assert (await sessiond.recreate(first.recreate_token)).worker.worker_id == home


def _garbage(token: bytes) -> list[bytes]:
    flipped = bytearray(token)
    flipped[-2] ^= 0x01
    return [
        b"garbage",
        b"x" * 64,
        bytes(flipped),                      # signature mismatch
        b"sdrt\x03" + token[5:],             # unknown version
        token[:9] + b"{}",                   # body without the fields
        token + b"trailing",
    ]


@pytest.mark.asyncio
async def test_a_garbage_token_is_invalid_and_takes_no_slot(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("a", capacity=2)
    session = await sessiond.create(QUEUE)
    await sessiond.complete(session.session_id)

    for token in _garbage(session.recreate_token):
        _, info = await rpc_error(sessiond.recreate(token, options=options(creation=5)),
                                  grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RECREATE_TOKEN")
        assert "recreate_token" in info.metadata.get("field", "recreate_token")

    assert (await sessiond.workers())["a"].open_sessions == 0
    assert sessiond.waiting == 0
    assert len(await sessiond.sessions()) == 1


@pytest.mark.asyncio
async def test_a_token_of_a_gone_worker_is_worker_unavailable_after_creation_timeout(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    gone = await make_worker("gone")
    session = await sessiond.create(QUEUE)
    await make_worker("other", capacity=5)  # same queue, free, and must not be used
    await gone.goodbye(drain=False)
    gone.close()
    await eventually(lambda: _not_connected(sessiond, "gone"))
    loop = asyncio.get_running_loop()
    started = loop.time()

    await rpc_error(sessiond.recreate(session.recreate_token, options=options(creation=0.3)),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "WORKER_UNAVAILABLE")

    assert loop.time() - started >= 0.3
    await rpc_error(sessiond.recreate(session.recreate_token, options=options(creation=0)),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "WORKER_UNAVAILABLE")
    assert (await sessiond.workers())["other"].open_sessions == 0
    assert sessiond.waiting == 0


@pytest.mark.asyncio
async def test_recreate_waits_for_the_tokens_worker_to_reconnect(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    first = await make_worker("phoenix")
    session = await sessiond.create(QUEUE)
    first.close()
    await eventually(lambda: _not_connected(sessiond, "phoenix"))
    await make_worker("bystander", capacity=5)

    pending = asyncio.create_task(sessiond.recreate(session.recreate_token, options=options(creation=30)))
    await eventually(lambda: sessiond.waiting == 1)
    reborn = await make_worker("phoenix")

    placed = await pending
    assert placed.worker.worker_id == "phoenix" and placed.state == OPEN
    await eventually(lambda: placed.session_id in reborn.held)


@pytest.mark.asyncio
async def test_recreate_on_a_full_worker_waits_for_its_slot_and_never_spills_to_another(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("one", capacity=1)
    held = await sessiond.create(QUEUE)
    await make_worker("spare", capacity=5)

    await rpc_error(sessiond.recreate(held.recreate_token, options=options(creation=0.3)),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "WORKER_UNAVAILABLE")
    pending = asyncio.create_task(sessiond.recreate(held.recreate_token, options=options(creation=30)))
    await eventually(lambda: sessiond.waiting == 1)
    assert (await sessiond.workers())["spare"].open_sessions == 0
    await sessiond.complete(held.session_id)

    placed = await pending
    assert placed.worker.worker_id == "one" and placed.session_id != held.session_id


async def _not_connected(sessiond: Sessiond, worker_id: str) -> bool:
    return worker_id not in await sessiond.workers()
