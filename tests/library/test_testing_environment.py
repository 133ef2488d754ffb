"""SessiondEnvironment, the test kit users run: workers come and go as a test needs, server options
pass through, and everything it started is gone when the block exits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sessiond_client import CreationTimeoutError, FailureCause, SessionFailedError, activity
from sessiond_client.testing import SessiondEnvironment


@activity.defn
async def where() -> str:
    return activity.info().worker_id


@pytest.mark.asyncio
async def test_workers_can_be_added_stopped_with_a_goodbye_and_the_environment_cleans_up() -> None:
    async with SessiondEnvironment.start(activities=[where], workers=2, max_concurrent_sessions=1,
                                         creation_timeout=timedelta(seconds=0.3)) as env:
        first, second = env.workers
        async with env.client.create_session(env.task_queue) as session:
            ran_on = await session.execute_activity(where)
            assert ran_on in (first.worker_id, second.worker_id)
            holder = first if ran_on == first.worker_id else second
            await env.stop_worker(holder, drain=False)
            failure = await session.wait_failed()
            assert failure is not None and failure.cause is FailureCause.WORKER_SHUTDOWN
            with pytest.raises(SessionFailedError):
                await session.execute_activity(where)
        assert env.workers == [second if holder is first else first]
        other = await env.start_worker([where], task_queue="elsewhere", worker_id="extra")
        async with env.client.create_session("elsewhere") as session:
            assert await session.execute_activity(where) == "extra" == other.worker_id
        with pytest.raises(CreationTimeoutError):  # the server option took effect (0.3 s, not 60 s)
            async with env.client.create_session("nobody-serves-this"):
                pass
        server = env.server
    assert server.engine.table.workers()[0] == []
    assert asyncio.all_tasks() == {asyncio.current_task()}
