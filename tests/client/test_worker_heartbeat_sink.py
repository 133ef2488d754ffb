"""An activity's heartbeat sink on the worker: made at the first ``activity.heartbeat()`` (in the loop's
thread or a sync activity's), and silent once the activity has ended (driven message by message)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from sessiond_client import DefaultPayloadConverter, SessionWorker, activity
from sessiond_client._fencing import Fence
from sessiond_client.api.v1 import worker_pb2

from tests.client.fakes import CLOSED, session_msg

CONVERTER = DefaultPayloadConverter()
Outbox = asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None]


class Late:
    """What the lingering sync activity saw after its execution ended (set in its thread)."""

    def __init__(self) -> None:
        self.go = threading.Event()  # the test lets the activity carry on once the worker let it go
        self.started = threading.Event()
        self.done = threading.Event()
        self.raised: BaseException | None = None


late = Late()


def progress(steps: int) -> str:
    """A sync activity that reports progress from its thread, then returns."""
    for step in range(steps):
        activity.heartbeat({"step": step})
    return "done"


async def progress_async(steps: int) -> str:
    """The same, on the loop."""
    for step in range(steps):
        activity.heartbeat({"step": step})
    return "done"


def lingering(beat_first: bool) -> str:
    """A sync activity that ignores cancellation and heartbeats after its execution has ended."""
    try:
        if beat_first:
            activity.heartbeat("early")
        late.started.set()
        assert late.go.wait(10), "the test never let the activity carry on"
        activity.heartbeat("late")  # the execution ended: nothing may be sent
        try:
            activity.heartbeat(object())  # details are still encoded in the caller's thread
        except TypeError as exc:
            late.raised = exc
    finally:
        late.done.set()
    return "too late"


@pytest_asyncio.fixture
async def wired() -> AsyncIterator[tuple[SessionWorker, Outbox]]:
    worker = SessionWorker("127.0.0.1:9", "q", [progress, progress_async, lingering])
    outbox: Outbox = asyncio.Queue()
    executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="test-activity")
    worker._outbox = outbox
    worker._executor = executor
    worker._fence = Fence(asyncio.get_running_loop().time())  # as a stream start does
    yield worker, outbox
    await worker._unwind_activities()
    executor.shutdown(wait=True)


def server(**message: Any) -> worker_pb2.WorkerHeartbeatResponse:
    return worker_pb2.WorkerHeartbeatResponse(
        server_incarnation="inc-1", heartbeat_interval=duration_pb2.Duration(seconds=10), **message
    )


def task(activity_id: str, activity_type: str, *args: Any) -> worker_pb2.WorkerHeartbeatResponse:
    return server(activity_task=worker_pb2.ActivityTask(
        activity_id=activity_id, session_id="s-1", activity_type=activity_type, input=CONVERTER.encode_args(args),
        heartbeat_timeout=duration_pb2.Duration(seconds=30)))


async def drain_until_result(outbox: Outbox) -> list[worker_pb2.WorkerHeartbeatRequest]:
    messages = []
    while True:
        message = await asyncio.wait_for(outbox.get(), 10)
        assert message is not None
        messages.append(message)
        if message.WhichOneof("message") == "activity_result":
            return messages


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["progress", "progress_async"])
async def test_heartbeats_from_the_activity_reach_the_stream_before_its_result(
    wired: tuple[SessionWorker, Outbox], kind: str
) -> None:
    worker, outbox = wired
    worker._on_message(server(session_started=worker_pb2.SessionStarted(session=session_msg("s-1"))))
    worker._on_message(task("a-1", kind, 3))
    messages = await drain_until_result(outbox)
    kinds = [m.WhichOneof("message") for m in messages]
    # The first heartbeat goes at once; the burst's latest details are flushed just before the result.
    assert kinds == ["activity_heartbeat", "activity_heartbeat", "activity_result"]
    assert [CONVERTER.from_payload(m.activity_heartbeat.details) for m in messages[:2]] == [{"step": 0}, {"step": 2}]
    assert all(m.activity_heartbeat.activity_id == "a-1" and m.activity_heartbeat.session_id == "s-1"
               for m in messages[:2])
    assert CONVERTER.from_payload(messages[-1].activity_result.result) == "done"


@pytest.mark.asyncio
@pytest.mark.parametrize("beat_first", [False, True], ids=["first-heartbeat-after-the-end", "sink-made-before"])
async def test_a_sync_activity_that_outlives_its_execution_sends_no_heartbeat(
    wired: tuple[SessionWorker, Outbox], beat_first: bool
) -> None:
    worker, outbox = wired
    global late
    late = Late()
    worker._on_message(server(session_started=worker_pb2.SessionStarted(session=session_msg("s-1"))))
    worker._on_message(task("a-1", "lingering", beat_first))
    assert await asyncio.to_thread(late.started.wait, 10)
    # The session ends: the activity is cancelled; its thread ignores the flag and carries on.
    worker._on_message(server(session_ended=worker_pb2.SessionEnded(session_id="s-1", state=CLOSED)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while "a-1" in worker._running:  # the execution's wrapper has ended
        assert loop.time() < deadline, "the cancelled execution never ended"
        await asyncio.sleep(0.01)
    late.go.set()
    assert await asyncio.to_thread(late.done.wait, 10)
    # A heartbeat from the thread hops to the loop with call_soon_threadsafe, queued before done was set.
    for _ in range(3):
        await asyncio.sleep(0)
    sent = []
    while not outbox.empty():
        message = outbox.get_nowait()
        assert message is not None
        sent.append(message)
    heartbeats = [m.activity_heartbeat for m in sent if m.WhichOneof("message") == "activity_heartbeat"]
    assert [CONVERTER.from_payload(h.details) for h in heartbeats] == (["early"] if beat_first else [])
    assert not any(m.WhichOneof("message") == "activity_result" for m in sent), "a cancelled activity reports nothing"
    assert isinstance(late.raised, TypeError), "unencodable details still raise in the activity"
