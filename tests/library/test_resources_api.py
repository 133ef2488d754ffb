"""The Python API for resources and selectors: workers declare capacities and labels, callers ask
for resources with a selector (async and sync clients), the activity sees what its session holds,
and waiting requests say why they wait."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from datetime import timedelta

import pytest
from sessiond_client import (
    InvalidArgumentError,
    NoCapacityError,
    SessionWorker,
    WaitingRequests,
    activity,
)
from sessiond_client.sync import SyncSessionClient
from sessiond_client.testing import ActivityEnvironment, SessiondEnvironment

from tests.integration.conftest import eventually


@activity.defn
async def gpus() -> dict[str, object]:
    info = activity.info()
    return {"resources": dict(info.resources), "session": dict(info.session.resources), "worker": info.worker_id}


@pytest.mark.asyncio
async def test_workers_declare_capacities_and_labels_and_sessions_get_what_they_ask_for() -> None:
    async with SessiondEnvironment.start(creation_timeout=timedelta(seconds=5)) as env:
        await env.start_worker([gpus], worker_id="a", capacities={"gpu": 2}, labels={"zone": "a"})
        await env.start_worker([gpus], worker_id="b", capacities={"gpu": 1}, labels={"zone": "b"})
        async with env.client.create_session(env.task_queue, resources={"gpu": 1}, selector="zone=b") as session:
            assert session.info.worker.worker_id == "b"
            assert dict(session.info.resources) == {"gpu": 1, "sessions": 1}
            assert dict(session.info.options.resources) == {"gpu": 1} and session.info.options.selector == "zone=b"
            seen = await session.execute_activity(gpus)
            assert seen == {"resources": {"gpu": 1, "sessions": 1}, "session": {"gpu": 1, "sessions": 1},
                            "worker": "b"}
            # The other worker's labels do not match; this one's single GPU is taken. (Another caller:
            # a fresh context, since one context holds one open session.)
            async def another() -> None:
                async with env.client.create_session(env.task_queue, resources={"gpu": 1}, selector="zone=b",
                                                     creation_timeout=0):
                    pass

            with pytest.raises(NoCapacityError, match="zone=b"):
                await asyncio.create_task(another(), context=contextvars.Context())
            holding = [s.session_id async for s in env.client.list_sessions(resource="gpu")]
            assert holding == [session.id]
        workers = {w.worker_id: w async for w in env.client.list_workers()}
        assert dict(workers["a"].capacities) == {"gpu": 2, "sessions": 1000}
        assert dict(workers["a"].labels) == {"zone": "a"} and dict(workers["a"].free) == {"gpu": 2, "sessions": 1000}
        assert env.workers[0].capacities == {"gpu": 2, "sessions": 1000}


@pytest.mark.asyncio
async def test_a_request_no_worker_can_hold_waits_and_waiting_requests_say_why() -> None:
    async with SessiondEnvironment.start([gpus], capacities={"gpu": 1}) as env:
        async def too_big() -> None:
            async with env.client.create_session(env.task_queue, resources={"gpu": 2}, creation_timeout=30):
                pass

        waiting = asyncio.create_task(too_big())
        try:
            async def listed() -> list[WaitingRequests]:
                return await env.client.waiting_requests(task_queue=env.task_queue)

            (kind,) = await eventually(listed, timeout=10, message="the create is listed as waiting")
            assert dict(kind.resources) == {"gpu": 2, "sessions": 1} and kind.count == 1
            assert kind.unplaceable_reason is not None and "gpu=2 (largest: 1)" in kind.unplaceable_reason
            # A worker that can hold it joins: the request is placed.
            await env.start_worker([gpus], capacities={"gpu": 2})
            await asyncio.wait_for(waiting, 10)
        finally:
            waiting.cancel()


@pytest.mark.asyncio
async def test_bad_resources_and_selectors_fail_with_the_field_named() -> None:
    async with SessiondEnvironment.start([gpus]) as env:
        with pytest.raises(InvalidArgumentError, match=r"options\.selector"):
            async with env.client.create_session(env.task_queue, selector="zone!=a"):
                pass
        with pytest.raises(InvalidArgumentError, match=r"options\.resources\[sessions\]"):
            async with env.client.create_session(env.task_queue, resources={"sessions": 2}):
                pass
        with pytest.raises(ValueError, match="must not be negative"):
            env.client.create_session(env.task_queue, resources={"gpu": -1})
        with pytest.raises(TypeError, match="must be an int"):
            env.client.create_session(env.task_queue, resources={"gpu": 1.5})  # type: ignore[dict-item]


def test_the_worker_checks_what_it_declares() -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        SessionWorker("127.0.0.1:1", "q", [gpus], capacities={"gpu": -1})
    with pytest.raises(ValueError, match="disagree"):
        SessionWorker("127.0.0.1:1", "q", [gpus], capacities={"sessions": 2}, max_concurrent_sessions=3)
    with pytest.raises(TypeError, match="labels"):
        SessionWorker("127.0.0.1:1", "q", [gpus], labels={"zone": 1})  # type: ignore[dict-item]
    worker = SessionWorker("127.0.0.1:1", "q", [gpus], capacities={"sessions": 2, "gpu": 1}, labels={"zone": "a"})
    assert worker.capacities == {"gpu": 1, "sessions": 2} and worker.labels == {"zone": "a"}


@pytest.mark.asyncio
async def test_the_sync_client_asks_for_resources_too() -> None:
    async with SessiondEnvironment.start([gpus], capacities={"gpu": 1}, labels={"zone": "a"}) as env:
        result: dict[str, object] = {}

        def caller() -> None:
            with SyncSessionClient(env.target) as client:
                with client.create_session(env.task_queue, resources={"gpu": 1}, selector="zone in (a,b)") as session:
                    result["ran"] = session.execute_activity(gpus)
                    result["waiting"] = client.waiting_requests()
                    result["holding"] = [s.session_id for s in client.list_sessions(resource="gpu")] == [session.id]

        thread = threading.Thread(target=caller)
        thread.start()
        await asyncio.to_thread(thread.join, 30)
        assert result["ran"] == {"resources": {"gpu": 1, "sessions": 1}, "session": {"gpu": 1, "sessions": 1},
                                 "worker": env.workers[0].worker_id}
        assert result["waiting"] == [] and result["holding"] is True


@pytest.mark.asyncio
async def test_the_activity_environment_can_pretend_to_hold_resources() -> None:
    env = ActivityEnvironment().with_info(resources={"gpu": 2, "sessions": 1})
    seen = await env.run(gpus)
    assert seen["resources"] == {"gpu": 2, "sessions": 1}
    assert (await ActivityEnvironment().run(gpus))["resources"] == {"sessions": 1}
