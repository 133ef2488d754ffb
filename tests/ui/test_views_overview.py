"""The overview never holds the event loop for long and every list in it is bounded.

An engine on the test's loop with thousands of workers registered straight into its table (no
gRPC: this is about the cost of building the view, not about the transport).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from sessiond.config import ServerConfig
from sessiond.core.model import SessionOptions, WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.server.convert import WallClock
from sessiond.server.engine import Engine
from sessiond.ui import views


def _register(engine: Engine, count: int, *, queues: int = 1, capacity: int = 2) -> None:
    for i in range(count):
        engine.table.connect_worker(engine.now(), WorkerRegistration(
            task_queue=f"queue-{i % queues:04d}", worker_id=f"w{i}", identity="", host_name="",
            capacity=ResourceVector.sessions(capacity)))


@pytest.mark.asyncio
async def test_the_overview_yields_to_the_event_loop_between_chunks_of_workers() -> None:
    engine = Engine(ServerConfig())
    _register(engine, 5 * views.CHUNK)
    for _ in range(10):
        engine.table.create(engine.now(), "queue-0000", SessionOptions())
    turns = 0
    running = True

    async def count_turns() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    before = turns
    overview = await views.overview(engine, {})
    running = False
    await ticker

    assert turns - before >= 4, "other tasks ran while the overview was built"
    [queue] = overview["queues"]
    assert queue["workers"] == 5 * views.CHUNK
    assert queue["capacity"] == {"sessions": 10 * views.CHUNK}
    assert queue["used"] == {"sessions": 10}
    assert overview["totals"]["open_sessions"] == 10
    engine.stop()


@pytest.mark.asyncio
async def test_the_overview_lists_a_bounded_number_of_task_queues_and_says_how_many_there_are() -> None:
    engine = Engine(ServerConfig())
    _register(engine, views.MAX_QUEUES + 20, queues=views.MAX_QUEUES + 20)

    overview = await views.overview(engine, {})

    assert len(overview["queues"]) == views.MAX_QUEUES
    assert overview["queues_total"] == views.MAX_QUEUES + 20
    assert overview["totals"]["task_queues"] == views.MAX_QUEUES + 20
    names = [q["task_queue"] for q in overview["queues"]]
    assert names == sorted(names)
    engine.stop()


@pytest.mark.asyncio
async def test_the_latest_failures_in_the_overview_are_bounded() -> None:
    engine = Engine(ServerConfig())
    _register(engine, 1, capacity=views.RECENT_FAILURES * 3)
    for _ in range(views.RECENT_FAILURES * 3):
        engine.table.create(engine.now(), "queue-0000", SessionOptions())
    worker = next(iter(engine.table.registry.workers.values()))
    engine.table.disconnect_worker(engine.now(), worker.key, worker.epoch)
    engine._flush()

    overview = await views.overview(engine, {})

    assert len(overview["failures"]["recent"]) == views.RECENT_FAILURES
    assert overview["failures"]["totals"] == {"WORKER_LOST": views.RECENT_FAILURES * 3}
    engine.stop()


def test_wall_times_are_rfc3339_utc_with_milliseconds_matching_the_wire_timestamps() -> None:
    clock = WallClock()
    for monotonic in (0.0, 12.3456, 1e6 + 0.9999):
        text = views.wall(clock, monotonic)
        wire = clock.timestamp(monotonic).ToDatetime()
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
        assert text.endswith("Z") and len(text.split(".")[1]) == 4
        assert abs((parsed - wire).total_seconds()) < 0.001
