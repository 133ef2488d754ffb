"""The test kit's ActivityEnvironment (no server), and the clear error SessiondEnvironment gives when
the server package is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest
from sessiond_client import activity
from sessiond_client.testing import ActivityEnvironment, SessiondEnvironment

from tests.integration.conftest import eventually


@activity.defn
async def resize(name: str, steps: int) -> str:
    start = activity.info().heartbeat_details or 0
    for step in range(start, steps):
        activity.heartbeat(step + 1)
    return f"{name}-small@{activity.info().attempt}"


@activity.defn
def blocking() -> str | None:
    activity.heartbeat("waiting")
    activity.wait_for_cancelled(10)
    return activity.cancellation_reason()


@activity.defn
async def forever() -> None:
    await asyncio.sleep(60)


@pytest.mark.asyncio
async def test_an_async_activity_runs_with_its_info_and_heartbeats_are_recorded() -> None:
    env = ActivityEnvironment()
    seen: list[object] = []
    env.on_heartbeat = seen.append
    assert await env.run(resize, "photo", 3) == "photo-small@1"
    assert env.heartbeats == seen == [1, 2, 3]


@pytest.mark.asyncio
async def test_a_retry_can_be_simulated_with_attempt_and_previous_details() -> None:
    env = ActivityEnvironment().with_info(attempt=2, heartbeat_details=2)
    assert await env.run(resize, "photo", 3) == "photo-small@2"
    assert env.heartbeats == [3]


@pytest.mark.asyncio
async def test_cancel_sets_the_flag_of_a_sync_activity_and_its_reason() -> None:
    env = ActivityEnvironment()
    run = asyncio.create_task(env.run(blocking))
    await eventually(lambda: env.heartbeats)
    env.cancel("SESSION_COMPLETED")
    assert await asyncio.wait_for(run, 10) == "SESSION_COMPLETED"


@pytest.mark.asyncio
async def test_cancel_cancels_an_async_activity_as_a_task() -> None:
    env = ActivityEnvironment()
    run = asyncio.create_task(env.run(forever))
    await asyncio.sleep(0)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)


@pytest.mark.asyncio
async def test_sessiond_environment_says_what_to_install_when_the_server_package_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "sessiond" or n.startswith("sessiond.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sessiond", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sessiond-client\[testing\]'"):
        async with SessiondEnvironment.start(activities=[resize]):
            pass
