"""Resources and selectors against a real server: GPU-style placement with worker processes, hard
limits under concurrent creates, what operators see, Recreate, and both kinds of restart."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2
from sessiond_client.api.v1 import session_service_pb2 as svc

from tests.integration.conftest import (
    OPEN,
    QUEUE,
    ProcessFactory,
    ServerFactory,
    Sessiond,
    WorkerFactory,
    eventually,
    rpc_error,
    seconds,
)
from tests.integration.rawworker import RawWorker, from_payload

pytestmark = pytest.mark.asyncio


def _options(creation: float | None = None, reattach: float | None = None, selector: str = "",
             **resources: int) -> session_pb2.SessionOptions:
    out = session_pb2.SessionOptions(resources=resources, selector=selector)
    if creation is not None:
        out.creation_timeout.CopyFrom(seconds(creation))
    if reattach is not None:
        out.reattach_timeout.CopyFrom(seconds(reattach))
    return out


async def test_gpu_sessions_go_where_gpus_are_free_and_a_two_gpu_request_waits_for_two(
        sessiond: Sessiond, spawn_worker: ProcessFactory) -> None:
    await spawn_worker("two-gpus", capacity=10, capacities={"gpu": 2}, labels={"zone": "a"})
    await spawn_worker("one-gpu", capacity=10, capacities={"gpu": 1}, labels={"zone": "b"})
    ones = [await sessiond.create(options=_options(gpu=1)) for _ in range(3)]
    assert sorted(s.worker.worker_id for s in ones) == ["one-gpu", "two-gpus", "two-gpus"]
    assert all(dict(s.resources) == {"sessions": 1, "gpu": 1} and dict(s.options.resources) == {"gpu": 1}
               for s in ones)
    # The activity is told what its session holds.
    reply = await sessiond.execute(ones[0].session_id, "resources")
    assert from_payload(reply.result) == {"sessions": 1, "gpu": 1}

    two = asyncio.create_task(sessiond.create(options=_options(gpu=2)))
    await eventually(lambda: sessiond.waiting == 1 or None)
    workers = await sessiond.workers()
    assert dict(workers["two-gpus"].capacities) == {"sessions": 10, "gpu": 2}
    assert dict(workers["two-gpus"].used) == {"sessions": 2, "gpu": 2}
    assert dict(workers["one-gpu"].labels) == {"zone": "b"}
    listing = await sessiond.stub.ListWorkers(svc.ListWorkersRequest())
    (waiting,) = listing.waiting
    assert (waiting.task_queue, dict(waiting.resources), waiting.count, waiting.unplaceable_reason) == (
        QUEUE, {"sessions": 1, "gpu": 2}, 1, "")

    # Freeing the 1-GPU worker does not help; freeing both GPUs of the other one does.
    for session in ones:
        if session.worker.worker_id == "one-gpu":
            await sessiond.complete(session.session_id)
    await asyncio.sleep(0)
    assert not two.done()
    for session in ones:
        if session.worker.worker_id == "two-gpus":
            await sessiond.complete(session.session_id)
    placed = await asyncio.wait_for(two, 10)
    assert placed.worker.worker_id == "two-gpus" and dict(placed.resources) == {"sessions": 1, "gpu": 2}


async def test_concurrent_creates_never_overdraw_any_resource(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("a", capacity=100, capacities={"gpu": 2, "scratch_gb": 500})
    await make_worker("b", capacity=100, capacities={"gpu": 1, "scratch_gb": 1000})

    async def one() -> str:
        try:
            session = await sessiond.create(options=_options(creation=0, gpu=1, scratch_gb=300))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return "no room"
        return session.worker.worker_id

    results = await asyncio.gather(*(one() for _ in range(30)))
    # a: 2 GPUs but 500 GB holds one; b: 1 GPU, 1000 GB holds one.
    assert sorted(results) == ["a", "b"] + ["no room"] * 28
    for worker in (await sessiond.workers()).values():
        assert all(worker.used[name] <= worker.capacities[name] for name in worker.used)


async def test_a_selector_no_connected_worker_matches_waits_and_ListWorkers_says_why(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("a1", capacity=5, labels={"zone": "a"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessiond.create(options=_options(creation=0, selector="zone=b"))
    assert "matches the selector 'zone=b'" in (caught.value.details() or "")
    waiting = asyncio.create_task(sessiond.create(options=_options(selector="zone = b")))
    await eventually(lambda: sessiond.waiting == 1 or None)
    listing = await sessiond.stub.ListWorkers(svc.ListWorkersRequest(task_queue=QUEUE))
    (kind,) = listing.waiting
    assert kind.selector == "zone=b"
    assert kind.unplaceable_reason == f"no connected worker of task queue {QUEUE!r} matches the selector 'zone=b'"
    # Other queues and later pages do not repeat it.
    assert list((await sessiond.stub.ListWorkers(svc.ListWorkersRequest(task_queue="other"))).waiting) == []
    await make_worker("a2", capacity=5, labels={"zone": "a"})
    first_page = await sessiond.stub.ListWorkers(svc.ListWorkersRequest(page_size=1))
    later = await sessiond.stub.ListWorkers(svc.ListWorkersRequest(page_size=1, page_token=first_page.next_page_token))
    assert len(first_page.waiting) == 1 and list(later.waiting) == []
    # A worker that matches joins: the request is placed.
    await make_worker("b1", capacity=5, labels={"zone": "b"})
    session = await asyncio.wait_for(waiting, 10)
    assert session.worker.worker_id == "b1" and session.options.selector == "zone=b"
    assert list((await sessiond.stub.ListWorkers(svc.ListWorkersRequest())).waiting) == []


async def test_a_recreate_keeps_its_worker_and_asks_for_its_own_resources(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w", capacity=5, capacities={"gpu": 2})
    first = await sessiond.create(options=_options(gpu=1))
    again = await sessiond.recreate(first.recreate_token, options=_options(gpu=1))
    assert again.worker.worker_id == "w" and dict(again.resources) == {"sessions": 1, "gpu": 1}
    error, _ = await rpc_error(sessiond.recreate(first.recreate_token, options=_options(creation=0, gpu=1)),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_CAPACITY")
    assert "no room for gpu=1,sessions=1" in (error.details() or "")
    plain = await sessiond.recreate(first.recreate_token)
    assert dict(plain.resources) == {"sessions": 1}
    holding = await sessiond.sessions(resource="gpu")
    assert {s.session_id for s in holding} == {first.session_id, again.session_id}


async def test_a_worker_restart_keeps_the_detached_sessions_gpus_from_a_waiting_create(
        sessiond: Sessiond, spawn_worker: ProcessFactory) -> None:
    worker = await spawn_worker("gpu-box", capacity=10, capacities={"gpu": 1})
    held = await sessiond.create(options=_options(reattach=30, gpu=1))
    worker.signal(signal.SIGKILL)
    await eventually(lambda: sessiond.server.engine.table.get(held.session_id).detached_at is not None or None)
    waiting = asyncio.create_task(sessiond.create(options=_options(gpu=1)))
    await eventually(lambda: sessiond.waiting == 1 or None)
    await spawn_worker("gpu-box", capacity=10, capacities={"gpu": 1})
    await eventually(lambda: sessiond.server.engine.table.get(held.session_id).detached_at is None or None)
    info = await sessiond.get(held.session_id)
    assert info.state == OPEN and dict(info.resources) == {"sessions": 1, "gpu": 1}
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the waiting create took the GPU of the reattached session"
    await sessiond.complete(held.session_id)
    assert (await asyncio.wait_for(waiting, 10)).worker.worker_id == "gpu-box"


async def test_a_restarted_server_counts_the_reported_sessions_vectors(make_server: ServerFactory) -> None:
    first = await make_server()
    worker = await RawWorker(first.target, QUEUE, worker_id="w", capacity=10, capacities={"gpu": 2},
                             labels={"zone": "a"}).start()
    try:
        session = await first.create(options=_options(gpu=2, selector="zone=a"))
        await eventually(lambda: session.session_id in worker.held or None)
        records, incarnation = list(worker.records.values()), worker.incarnation
    finally:
        await worker.stop()
    second = await make_server(recovery_window=timedelta(seconds=30))
    back = await RawWorker(second.target, QUEUE, worker_id="w", capacity=10, capacities={"gpu": 2},
                           labels={"zone": "a"}, held=records, held_from=incarnation).start()
    try:
        assert back.reattached == [session.session_id]
        adopted = await second.get(session.session_id)
        assert dict(adopted.resources) == {"sessions": 1, "gpu": 2} and adopted.options.selector == "zone=a"
        assert dict((await second.workers())["w"].used) == {"sessions": 1, "gpu": 2}
        await rpc_error(second.create(options=_options(creation=0, gpu=1)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "NO_CAPACITY")
    finally:
        await back.stop()
