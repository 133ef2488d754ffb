"""Activity heartbeats, heartbeat timeouts and retry policies, end to end: a real server, real
SessionWorkers and the client (through the test kit, which is what users run too)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client import (
    ActivityError,
    ActivityHeartbeatTimeoutError,
    ApplicationError,
    FailureCause,
    RetryPolicy,
    SessionFailedError,
    activity,
)
from sessiond_client.testing import SessiondEnvironment

from tests.integration.conftest import eventually

ATTEMPTS: list[tuple[int, Any]] = []
STARTED = threading.Event()


@activity.defn
async def count_async(n: int) -> int:
    for i in range(n):
        activity.heartbeat({"done": i + 1})
        await asyncio.sleep(0)
    return n


@activity.defn
def count_sync(n: int) -> int:
    for i in range(n):
        activity.heartbeat(i + 1)
    return n


@activity.defn
async def beat_then_hang(beats: int) -> None:
    for i in range(beats):
        activity.heartbeat(i + 1)
        await asyncio.sleep(0.05)
    await asyncio.sleep(60)  # silent from now on: the heartbeat timeout must end it


@activity.defn
def hang_sync() -> str:
    STARTED.set()
    activity.wait_for_cancelled(30)
    return "cancelled" if activity.is_cancelled() else "not cancelled"


@activity.defn
async def flaky(fail_times: int) -> dict[str, Any]:
    info = activity.info()
    ATTEMPTS.append((info.attempt, info.heartbeat_details))
    activity.heartbeat(f"progress of attempt {info.attempt}")
    if info.attempt <= fail_times:
        raise ApplicationError(f"attempt {info.attempt} failed", type="Flaky")
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}


@activity.defn
async def fatal() -> None:
    ATTEMPTS.append((activity.info().attempt, None))
    raise ApplicationError("no point retrying", type="Fatal")


@activity.defn
async def slow_step(seconds: float) -> str:
    ATTEMPTS.append((activity.info().attempt, None))
    await asyncio.sleep(seconds)
    raise ApplicationError("failed after a while", type="Flaky")


ACTIVITIES = [count_async, count_sync, beat_then_hang, hang_sync, flaky, fatal, slow_step]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[SessiondEnvironment]:
    ATTEMPTS.clear()
    STARTED.clear()
    async with SessiondEnvironment.start(activities=ACTIVITIES) as env:
        yield env


@pytest.mark.asyncio
@pytest.mark.parametrize("fn", [count_async, count_sync])
async def test_an_activity_that_heartbeats_within_its_timeout_completes(env: SessiondEnvironment, fn: Any) -> None:
    async with env.client.create_session(env.task_queue) as session:
        result = await session.execute_activity(fn, 500, heartbeat_timeout=timedelta(seconds=2))
    assert result == 500


@pytest.mark.asyncio
async def test_a_silent_activity_is_cancelled_and_the_caller_gets_a_typed_timeout_with_the_last_details(
        env: SessiondEnvironment) -> None:
    async with env.client.create_session(env.task_queue) as session:
        started = time.monotonic()
        with pytest.raises(ActivityHeartbeatTimeoutError) as caught:
            await session.execute_activity(beat_then_hang, 3, heartbeat_timeout=1.0)
        elapsed = time.monotonic() - started
        assert session.state.name == "OPEN"  # an activity timeout is not a session failure
        assert await session.execute_activity(count_async, 2) == 2  # and the session still works
    error = caught.value
    assert isinstance(error, ActivityError)
    assert error.heartbeat_details == 3
    assert error.type == "ActivityHeartbeatTimeout" and not error.non_retryable
    assert error.activity_type == "beat_then_hang"
    assert elapsed < 20  # nowhere near the 60 s the activity would have slept


@pytest.mark.asyncio
async def test_a_sync_activity_silent_past_its_heartbeat_timeout_sees_its_cancellation(
        env: SessiondEnvironment) -> None:
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(ActivityHeartbeatTimeoutError) as caught:
            await session.execute_activity(hang_sync, heartbeat_timeout=0.2)
    assert caught.value.heartbeat_details is None  # it never sent any
    assert STARTED.is_set()


@pytest.mark.asyncio
async def test_details_reach_the_caller_on_failure_and_each_retry_sees_the_previous_attempt(
        env: SessiondEnvironment) -> None:
    policy = RetryPolicy(initial_interval=0.01, maximum_attempts=5)
    async with env.client.create_session(env.task_queue) as session:
        result = await session.execute_activity(flaky, 2, retry_policy=policy)
    assert result == {"attempt": 3, "resumed_from": "progress of attempt 2"}
    assert ATTEMPTS == [(1, None), (2, "progress of attempt 1"), (3, "progress of attempt 2")]


@pytest.mark.asyncio
async def test_the_retry_policy_gives_up_after_maximum_attempts_with_the_last_error(
        env: SessiondEnvironment) -> None:
    policy = RetryPolicy(initial_interval=0.01, backoff_coefficient=1.5, maximum_attempts=3)
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(ActivityError) as caught:
            await session.execute_activity(flaky, 10, retry_policy=policy)
    assert [a for a, _ in ATTEMPTS] == [1, 2, 3]
    assert (caught.value.type, caught.value.attempt, caught.value.message) == ("Flaky", 3, "attempt 3 failed")
    assert caught.value.heartbeat_details == "progress of attempt 3"


@pytest.mark.asyncio
async def test_non_retryable_error_types_are_not_retried(env: SessiondEnvironment) -> None:
    policy = RetryPolicy(initial_interval=0.01, maximum_attempts=5, non_retryable_error_types=["Fatal"])
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(ActivityError) as caught:
            await session.execute_activity("fatal", retry_policy=policy)
    assert caught.value.type == "Fatal" and ATTEMPTS == [(1, None)]


@pytest.mark.asyncio
async def test_an_unregistered_activity_is_non_retryable_so_the_policy_does_not_retry_it(
        env: SessiondEnvironment) -> None:
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(ActivityError) as caught:
            await session.execute_activity("nope", retry_policy=RetryPolicy(initial_interval=0.01))
    assert caught.value.type == "ActivityNotRegistered" and caught.value.attempt == 1


@pytest.mark.asyncio
async def test_heartbeat_timeouts_are_retried_like_failures(env: SessiondEnvironment) -> None:
    policy = RetryPolicy(initial_interval=0.01, maximum_attempts=2)
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(ActivityHeartbeatTimeoutError) as caught:
            await session.execute_activity(beat_then_hang, 1, heartbeat_timeout=0.3, retry_policy=policy)
    assert caught.value.attempt == 2


@pytest.mark.asyncio
async def test_a_session_failure_is_never_retried(env: SessiondEnvironment) -> None:
    policy = RetryPolicy(initial_interval=0.01, maximum_attempts=10)
    [worker] = env.workers
    async with env.client.create_session(env.task_queue) as session:
        run = asyncio.create_task(session.execute_activity(slow_step, 30.0, retry_policy=policy))
        await eventually(lambda: ATTEMPTS)
        await env.lose_worker(worker)
        with pytest.raises(SessionFailedError) as caught:
            await asyncio.wait_for(run, 10)
    assert caught.value.cause is FailureCause.WORKER_LOST
    assert ATTEMPTS == [(1, None)]


@pytest.mark.asyncio
async def test_a_session_that_fails_during_the_backoff_stops_the_retries(
        env: SessiondEnvironment, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sessiond_client")
    policy = RetryPolicy(initial_interval=30.0, maximum_attempts=10)
    [worker] = env.workers
    async with env.client.create_session(env.task_queue) as session:
        run = asyncio.create_task(session.execute_activity(flaky, 5, retry_policy=policy))
        await eventually(lambda: any("retrying in 30 s" in r.getMessage() for r in caplog.records),
                         message="the first attempt failed: the retry waits in its backoff")
        await env.lose_worker(worker)
        with pytest.raises(SessionFailedError):
            await asyncio.wait_for(run, 10)
    assert len(ATTEMPTS) == 1


def test_retry_policy_delays_grow_by_the_coefficient_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=3, maximum_interval=20)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    assert RetryPolicy(initial_interval=0.5).delay(100) == 50  # default cap: 100 x initial
    assert RetryPolicy(maximum_attempts=2).retries(1, "X", False)
    assert not RetryPolicy(maximum_attempts=2).retries(2, "X", False)
    assert RetryPolicy().retries(10_000, "X", False)  # 0 = no limit
    assert not RetryPolicy().retries(1, "X", True)


@pytest.mark.parametrize("bad", [{"initial_interval": 0}, {"backoff_coefficient": 0.5}, {"maximum_attempts": -1},
                                 {"initial_interval": 2, "maximum_interval": 1}])
def test_retry_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)
