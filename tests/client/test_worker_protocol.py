"""SessionWorker's side of the WorkerHeartbeat protocol, driven message by message (no network)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from sessiond_client import ApplicationError, DefaultPayloadConverter, SessionState, SessionWorker, activity
from sessiond_client._fencing import Fence
from sessiond_client._worker import _activity_table, _is_async
from sessiond_client.api.v1 import session_pb2, worker_pb2

from tests.client.fakes import CLOSED, FAILED, session_msg

CONVERTER = DefaultPayloadConverter()
Outbox = asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None]


async def add(a: int, b: int) -> int:
    return a + b


def whoami() -> dict[str, Any]:
    info = activity.info()
    return {"session": info.session_id, "type": info.activity_type, "thread": threading.current_thread().name}


async def sleepy() -> None:
    await asyncio.Event().wait()


sync_started = threading.Event()


def sync_wait() -> str:
    sync_started.set()
    assert activity.wait_for_cancelled(10), "never cancelled"
    return f"cancelled: {activity.cancellation_reason()}"


async def boom() -> None:
    raise ApplicationError("nope", {"k": 1}, type="Boom", non_retryable=True)


def plain_error() -> None:
    raise KeyError("missing")


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
    worker = SessionWorker("127.0.0.1:9", "q", [add, whoami, sleepy, sync_wait, boom, plain_error,
                                                progress, progress_async, lingering])
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


def start(session_id: str) -> worker_pb2.WorkerHeartbeatResponse:
    return server(session_started=worker_pb2.SessionStarted(session=session_msg(session_id)))


def task(activity_id: str, session_id: str, activity_type: str, *args: Any) -> worker_pb2.WorkerHeartbeatResponse:
    payload = CONVERTER.encode_args(args)
    return server(
        activity_task=worker_pb2.ActivityTask(
            activity_id=activity_id, session_id=session_id, activity_type=activity_type, input=payload
        )
    )


async def next_result(outbox: Outbox) -> worker_pb2.ActivityResult:
    while True:
        message = await asyncio.wait_for(outbox.get(), 10)
        assert message is not None
        if message.WhichOneof("message") == "activity_result":
            return message.activity_result


def decode(result: worker_pb2.ActivityResult) -> Any:
    return CONVERTER.from_payload(result.result)


@pytest.mark.asyncio
async def test_registered_adopts_the_worker_id_and_interval(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, _ = wired
    msg = server(registered=worker_pb2.Registered(worker_id="assigned"))
    msg.heartbeat_interval.CopyFrom(duration_pb2.Duration(seconds=2, nanos=500_000_000))
    worker._on_message(msg)
    assert worker.worker_id == "assigned"
    assert worker._interval == 2.5
    assert worker.server_incarnation == "inc-1"
    assert await asyncio.wait_for(worker.wait_registered(), 1) == "assigned"


@pytest.mark.asyncio
async def test_runs_an_async_activity_in_a_held_session(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    assert worker.held_sessions == {"s-1"}
    worker._on_message(task("a-1", "s-1", "add", 2, 3))
    result = await next_result(outbox)
    assert (result.activity_id, result.session_id, decode(result)) == ("a-1", "s-1", 5)


@pytest.mark.asyncio
async def test_sync_activity_runs_in_a_thread_and_sees_its_info(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "whoami"))
    value = decode(await next_result(outbox))
    assert value["session"] == "s-1" and value["type"] == "whoami"
    assert value["thread"].startswith("test-activity")


@pytest.mark.asyncio
async def test_work_for_a_session_not_held_is_fenced(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(task("a-1", "s-unknown", "add", 1, 1))
    result = await next_result(outbox)
    assert result.WhichOneof("outcome") == "failure"
    assert result.failure.type == "SessionNotHeld"
    assert result.failure.non_retryable


@pytest.mark.asyncio
async def test_an_unregistered_activity_fails_non_retryable(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "nope"))
    result = await next_result(outbox)
    assert result.failure.type == "ActivityNotRegistered"
    assert "add" in result.failure.message
    assert result.failure.non_retryable


@pytest.mark.asyncio
async def test_failures_carry_type_details_and_retryability(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "boom"))
    failure = (await next_result(outbox)).failure
    assert (failure.type, failure.message, failure.non_retryable) == ("Boom", "nope", True)
    assert CONVERTER.from_payload(failure.details) == {"k": 1}
    worker._on_message(task("a-2", "s-1", "plain_error"))
    failure = (await next_result(outbox)).failure
    assert (failure.type, failure.message, failure.non_retryable) == ("KeyError", "'missing'", False)
    assert not failure.HasField("details")


@pytest.mark.asyncio
async def test_undecodable_input_is_a_non_retryable_payload_error(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    msg = task("a-1", "s-1", "add")
    msg.activity_task.input.CopyFrom(session_pb2.Payload(metadata={"encoding": b"xml"}, data=b"<a/>"))
    worker._on_message(msg)
    failure = (await next_result(outbox)).failure
    assert failure.type == "PayloadError" and failure.non_retryable


@pytest.mark.asyncio
async def test_cancel_activity_cancels_the_task_and_reports_nothing(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "sleepy"))
    running = worker._running["a-1"]
    await asyncio.sleep(0)
    cancel = worker_pb2.CancelActivity(activity_id="a-1", session_id="s-1", reason="ACTIVITY_TIMEOUT")
    worker._on_message(server(cancel_activity=cancel))
    await asyncio.wait({running.task}, timeout=5)
    assert running.task.done()
    assert running.context.cancel_reason == "ACTIVITY_TIMEOUT"
    assert "a-1" not in worker._running
    assert outbox.empty()


@pytest.mark.asyncio
async def test_an_activity_cancelled_before_its_first_step_is_forgotten_and_reports_nothing(
        wired: tuple[SessionWorker, Outbox]) -> None:
    # The task and its cancellation in one loop iteration: the wrapper never runs (nor its finally).
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "add", 1, 2))
    running = worker._running["a-1"]
    cancel = worker_pb2.CancelActivity(activity_id="a-1", session_id="s-1", reason="ACTIVITY_TIMEOUT")
    worker._on_message(server(cancel_activity=cancel))
    assert "a-1" not in worker._running
    await asyncio.wait({running.task}, timeout=5)
    assert running.task.cancelled()
    assert outbox.empty()
    # The same id again (a retry of the task) runs normally.
    worker._on_message(task("a-1", "s-1", "add", 1, 2))
    assert CONVERTER.from_payload((await next_result(outbox)).result) == 3
    assert "a-1" not in worker._running  # forgotten in the same step that reported it


async def same_info() -> bool:
    return activity.info() is activity.info() and activity.info().activity_id == "a-1"


@pytest.mark.asyncio
async def test_activity_info_is_one_object_per_execution(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._activities["same_info"] = same_info
    worker._async_activities = worker._async_activities | {"same_info"}
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "same_info"))
    assert CONVERTER.from_payload((await next_result(outbox)).result) is True


@pytest.mark.asyncio
async def test_session_ended_cancels_a_sync_activity_through_its_flag(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    sync_started.clear()
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "sync_wait"))
    running = worker._running["a-1"]
    assert await asyncio.to_thread(sync_started.wait, 5)
    worker._on_message(server(session_ended=worker_pb2.SessionEnded(session_id="s-1", state=CLOSED)))
    assert worker.held_sessions == frozenset()
    assert running.context.cancelled and running.context.cancel_reason == "SESSION_COMPLETED"
    await asyncio.wait({running.task}, timeout=5)
    assert outbox.empty()  # the late return of the thread is discarded
    # Later work for the dropped session is fenced.
    worker._on_message(task("a-2", "s-1", "add", 1, 2))
    assert (await next_result(outbox)).failure.type == "SessionNotHeld"


@pytest.mark.asyncio
async def test_failed_session_cancels_with_session_failed(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, _ = wired
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "sleepy"))
    running = worker._running["a-1"]
    worker._on_message(server(session_ended=worker_pb2.SessionEnded(session_id="s-1", state=FAILED)))
    assert running.context.cancel_reason == "SESSION_FAILED"
    assert worker._idle.is_set()


@pytest.mark.asyncio
async def test_heartbeats_follow_the_interval_and_a_shorter_one_applies_at_once(
    wired: tuple[SessionWorker, Outbox],
) -> None:
    worker, outbox = wired
    worker._send(worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()))  # "now" is the last send
    await outbox.get()
    beats = asyncio.create_task(worker._heartbeat_loop())
    try:
        await asyncio.sleep(0.05)
        assert outbox.empty()  # 10 s interval: nothing yet
        shorter = server()
        shorter.heartbeat_interval.CopyFrom(duration_pb2.Duration(nanos=50_000_000))
        worker._on_message(shorter)
        for _ in range(3):
            message = await asyncio.wait_for(outbox.get(), 2)
            assert message is not None and message.WhichOneof("message") == "heartbeat"
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)


def test_activity_table() -> None:
    @activity.defn(name="renamed")
    def one() -> None: ...

    def two() -> None: ...

    assert set(_activity_table([one, two])) == {"renamed", "two"}
    assert _activity_table({"x": two}) == {"x": two}
    with pytest.raises(ValueError, match="twice"):
        _activity_table([two, two])
    with pytest.raises(ValueError, match="at least one"):
        _activity_table([])
    with pytest.raises(TypeError):
        _activity_table({"x": 3})  # type: ignore[arg-type]


def test_async_detection() -> None:
    class Callable:
        async def __call__(self) -> None: ...

    assert _is_async(add)
    assert _is_async(functools.partial(add, 1))
    assert _is_async(Callable())
    assert not _is_async(whoami)
    assert not _is_async(functools.partial(whoami))


def test_activity_helpers_outside_an_activity() -> None:
    assert not activity.in_activity()
    with pytest.raises(RuntimeError):
        activity.info()
    with pytest.raises(RuntimeError):
        activity.is_cancelled()


def test_worker_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        SessionWorker("t", "", [add])
    with pytest.raises(ValueError):
        SessionWorker("t", "q", [add], max_concurrent_sessions=0)
    worker = SessionWorker("t", "q", [add], identity=None, host_name="box")
    assert worker.identity.endswith("@box")
    assert worker.worker_id is None
    assert SessionState.OPEN.name == "OPEN"


# -- activity heartbeats: made at the first activity.heartbeat(), silent once the execution ended --


def heartbeating_task(activity_id: str, activity_type: str, *args: Any) -> worker_pb2.WorkerHeartbeatResponse:
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
    worker._on_message(heartbeating_task("a-1", kind, 3))
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
    worker._on_message(heartbeating_task("a-1", "lingering", beat_first))
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
