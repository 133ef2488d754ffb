"""A raw-stub sessiond worker for the integration tests: the wire protocol, nothing more.

It speaks ``WorkerHeartbeat`` with the generated stubs only (no client library), so the server is
tested against the protocol, not against our own client. It registers on one task queue,
heartbeats at the interval the server sends in every message, holds the sessions it is given,
runs four activity types and obeys CancelActivity and SessionEnded:

=========  ==============================================================================
``echo``   returns its input payload unchanged
``fail``   returns an ``ActivityFailure`` (type ``TestFailure``, message = the JSON input)
``sleep``  waits the number of seconds in its JSON input, then returns it; cancellable
``record`` returns the id of the worker that ran it (JSON string)
=========  ==============================================================================

In-process: ``worker = await RawWorker(target, "q", worker_id="w1").start()`` runs as asyncio tasks
in the caller's loop. As a separate OS process (so a test can SIGKILL or SIGSTOP it)::

    python -m tests.integration.rawworker --target 127.0.0.1:PORT --task-queue q --worker-id w1 --capacity 1

prints one JSON object per line for every event (``registered``, ``session_started``, ...) and reads
commands from stdin, one per line: ``goodbye``, ``goodbye drain``, ``close``, ``pause``, ``resume``,
``stop reading``, ``read``. With ``--no-read`` it stops reading its stream right after ``Registered``
(a worker that heartbeats, every ``--heartbeat-every`` seconds, but never reads). It exits when its
stream ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from sessiond_client.api.v1 import session_pb2, session_service_pb2_grpc, worker_pb2

JSON = {"encoding": b"json/plain"}

Emit = Callable[[dict[str, Any]], None]


def json_payload(value: Any) -> session_pb2.Payload:
    """A JSON payload, as the Python library's default converter writes it."""
    return session_pb2.Payload(metadata=JSON, data=json.dumps(value).encode())


def from_payload(payload: session_pb2.Payload) -> Any:
    """The JSON value of a payload (None when empty)."""
    return json.loads(payload.data) if payload.data else None


class RawWorker:
    """One worker stream on one task queue, with everything it saw recorded for assertions."""

    def __init__(self, target: str, task_queue: str, *, worker_id: str = "", capacity: int = 1,
                 host_name: str = "", identity: str = "", emit: Emit | None = None,
                 metadata: tuple[tuple[str, str], ...] = (), instance_id: str = "",
                 held: list[session_pb2.Session] | None = None, held_from: str = "", read: bool = True,
                 heartbeat_every: float | None = None,
                 capacities: dict[str, int] | None = None, labels: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self._credentials = credentials
        self.task_queue = task_queue
        self.requested_worker_id = worker_id
        self.capacity = capacity
        self.capacities = dict(capacities or {})
        self.labels = dict(labels or {})
        self.host_name = host_name
        self.identity = identity or f"{os.getpid()}@rawworker"
        self._emit = emit
        self._metadata = metadata
        self.instance_id = instance_id
        # The sessions as the server sent them, to report when registering again (held_sessions).
        self.records: dict[str, session_pb2.Session] = {s.session_id: s for s in held or ()}
        self.held_from = held_from
        self.reattached: list[str] = []
        self.replaced = ""
        self.restarting = False
        # What the worker saw, in order; tests read these.
        self.events: list[dict[str, Any]] = []
        self.worker_id = ""
        self.incarnation = ""
        self.interval: float | None = None
        self.held: set[str] = set()
        self.started: list[str] = []
        self.max_held = 0
        self.goodbye_acks: list[tuple[bool, list[str]]] = []
        self.ended: dict[str, dict[str, Any]] = {}
        self.ran: list[dict[str, Any]] = []
        self.cancelled: dict[str, str] = {}
        self.rejected: list[str] = []
        self.heartbeats_sent = 0
        self.heartbeating = True
        # A fixed heartbeat period (else the server's interval); a worker that does not read
        # never learns a shorter interval.
        self.heartbeat_every = heartbeat_every
        self.max_message_size = 0
        self._reading = asyncio.Event()
        if read:
            self._reading.set()
        self.registered = asyncio.Event()
        self.stream_done = asyncio.Event()
        self.stream_error: grpc.StatusCode | None = None
        self._outbox: asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None] = asyncio.Queue()
        self._interval_changed = asyncio.Event()
        self._running: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self, *, wait: bool = True, timeout: float = 10.0) -> RawWorker:  # noqa: ASYNC109, RUF100
        """Open the stream and register; by default wait for ``Registered``."""
        self._channel = grpc.aio.insecure_channel(self.target) if self._credentials is None \
            else grpc.aio.secure_channel(self.target, self._credentials)
        stub = session_service_pb2_grpc.SessionServiceStub(self._channel)
        self._outbox.put_nowait(worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
            task_queue=self.task_queue, worker_id=self.requested_worker_id, identity=self.identity,
            host_name=self.host_name, max_concurrent_sessions=self.capacity, instance_id=self.instance_id,
            held_sessions=list(self.records.values()), held_from_incarnation=self.held_from,
            capacities=self.capacities, labels=self.labels,
        )))
        self._call = stub.WorkerHeartbeat(self._requests(), metadata=self._metadata or None)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]
        if wait:
            async with asyncio.timeout(timeout):
                await self.registered.wait()
        return self

    async def goodbye(self, *, drain: bool) -> None:
        """Say goodbye: with ``drain`` keep the open sessions, without it the server fails them."""
        self._send(worker_pb2.WorkerHeartbeatRequest(goodbye=worker_pb2.Goodbye(drain=drain)))

    def decline(self, session_id: str) -> None:
        """Give back a session got back at registration (it then fails WORKER_LOST)."""
        self.held.discard(session_id)
        self.records.pop(session_id, None)
        self._send(worker_pb2.WorkerHeartbeatRequest(decline_session=worker_pb2.DeclineSession(session_id=session_id)))

    def pause(self) -> None:
        """Stop heartbeating (a hung worker: the stream stays open, nothing is sent)."""
        self.heartbeating = False

    def resume(self) -> None:
        """Heartbeat again, starting now."""
        self.heartbeating = True
        self._interval_changed.set()  # wake the heartbeat loop instead of waiting out an interval

    def stop_reading(self) -> None:
        """Stop reading the stream (messages pile up in the server; heartbeats still go out)."""
        self._reading.clear()

    def start_reading(self) -> None:
        """Read the stream again."""
        self._reading.set()

    def close(self) -> None:
        """Half-close the request stream (after a goodbye: a clean exit; without one: worker lost)."""
        self._outbox.put_nowait(None)

    async def stop(self) -> None:
        """Tear down at once (cancel the call, the tasks and the channel). Idempotent."""
        if self._call is not None:
            self._call.cancel()
        for task in [*self._tasks, *(t for _, t in self._running.values())]:
            task.cancel()
        for task in [*self._tasks, *(t for _, t in self._running.values())]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._running.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> RawWorker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- stream

    def _note(self, event: str, **fields: Any) -> None:
        record = {"event": event, **fields}
        self.events.append(record)
        if self._emit is not None:
            self._emit(record)

    def _send(self, message: worker_pb2.WorkerHeartbeatRequest) -> None:
        self._outbox.put_nowait(message)

    async def _requests(self) -> AsyncIterator[worker_pb2.WorkerHeartbeatRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            while True:
                if self.registered.is_set():
                    await self._reading.wait()
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                if self.registered.is_set():
                    await self._reading.wait()  # a message read just before stop_reading() waits too
                self._on_message(message)
        except grpc.aio.AioRpcError as exc:
            self.stream_error = exc.code()
        except asyncio.CancelledError:
            self.stream_error = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.stream_done.set()
            self._note("stream_ended", code=self.stream_error.name if self.stream_error else "OK")

    def _on_message(self, message: worker_pb2.WorkerHeartbeatResponse) -> None:
        self.incarnation = message.server_incarnation
        interval = message.heartbeat_interval.ToTimedelta().total_seconds()
        if interval > 0 and interval != self.interval:
            self.interval = interval
            self._interval_changed.set()
            self._note("interval", seconds=interval)
        kind = message.WhichOneof("message")
        if kind == "registered":
            self.worker_id = message.registered.worker_id
            self.max_message_size = message.registered.max_message_size
            back = list(message.registered.reattached_sessions)
            self.reattached = [s.session_id for s in back]
            # Exactly what Registered lists is held from now on.
            self.held = set(self.reattached)
            self.records = {s.session_id: s for s in back}
            self.registered.set()
            self._note("registered", worker_id=self.worker_id, incarnation=self.incarnation, interval=interval,
                       reattached=self.reattached)
        elif kind == "worker_replaced":
            self.replaced = message.worker_replaced.message
            self._note("worker_replaced", message=self.replaced)
        elif kind == "server_restarting":
            self.restarting = True
            self._note("server_restarting")
        elif kind == "session_started":
            sid = message.session_started.session.session_id
            self.records[sid] = message.session_started.session
            self.held.add(sid)
            self.started.append(sid)
            self.max_held = max(self.max_held, len(self.held))
            self._note("session_started", session_id=sid, held=len(self.held))
        elif kind == "session_ended":
            ended = message.session_ended
            self.held.discard(ended.session_id)
            self.records.pop(ended.session_id, None)
            state = session_pb2.SessionState.Name(ended.state)
            cause = session_pb2.FailureCause.Name(ended.failure.cause)
            self.ended[ended.session_id] = {"state": state, "cause": cause}
            for aid, (sid, task) in list(self._running.items()):
                if sid == ended.session_id:
                    task.cancel()
                    self.cancelled.setdefault(aid, "SESSION_ENDED")
            self._note("session_ended", session_id=ended.session_id, state=state, cause=cause)
        elif kind == "goodbye_ack":
            ack = message.goodbye_ack
            self.goodbye_acks.append((ack.drain, list(ack.session_ids)))
            self._note("goodbye_ack", drain=ack.drain, session_ids=list(ack.session_ids))
        elif kind == "activity_task":
            self._on_task(message.activity_task)
        elif kind == "cancel_activity":
            cancel = message.cancel_activity
            self.cancelled[cancel.activity_id] = cancel.reason
            running = self._running.pop(cancel.activity_id, None)
            if running is not None:
                running[1].cancel()
            self._note("activity_cancelled", activity_id=cancel.activity_id, session_id=cancel.session_id,
                       reason=cancel.reason)

    def _on_task(self, task: worker_pb2.ActivityTask) -> None:
        if task.session_id not in self.held:
            # Fencing: never run work for a session this worker does not hold.
            self.rejected.append(task.activity_id)
            self._note("activity_rejected", activity_id=task.activity_id, session_id=task.session_id)
            self._result(task, failure=session_pb2.ActivityFailure(
                type="SessionNotHeld", message=f"worker {self.worker_id} does not hold {task.session_id}",
                non_retryable=True))
            return
        self.ran.append({"activity_id": task.activity_id, "session_id": task.session_id,
                         "activity_type": task.activity_type, "headers": dict(task.headers),
                         "resources": dict(task.resources)})
        self._note("activity_started", activity_id=task.activity_id, session_id=task.session_id,
                   activity_type=task.activity_type)
        runner = asyncio.create_task(self._run(task))
        self._running[task.activity_id] = (task.session_id, runner)

    async def _run(self, task: worker_pb2.ActivityTask) -> None:
        try:
            kind = task.activity_type
            if kind == "echo":
                self._result(task, result=task.input)
            elif kind == "fail":
                self._result(task, failure=session_pb2.ActivityFailure(
                    type="TestFailure", message=str(from_payload(task.input)), non_retryable=True,
                    details=json_payload({"worker_id": self.worker_id})))
            elif kind == "sleep":
                seconds = float(from_payload(task.input) or 0)
                await asyncio.sleep(seconds)
                self._result(task, result=json_payload(seconds))
            elif kind == "record":
                self._result(task, result=json_payload(self.worker_id))
            elif kind == "resources":
                self._result(task, result=json_payload(dict(task.resources)))
            elif kind == "blob":
                # A raw result of N bytes: a worker that does not check the announced size limit.
                size = int(from_payload(task.input))
                self._result(task, result=session_pb2.Payload(metadata={"encoding": b"binary/plain"},
                                                              data=b"x" * size))
            else:
                self._result(task, failure=session_pb2.ActivityFailure(
                    type="ActivityNotRegistered", message=f"no activity {kind!r}", non_retryable=True))
        except asyncio.CancelledError:
            # Told to cancel: the server has already given up on the result, so send none.
            self._note("activity_stopped", activity_id=task.activity_id)
        finally:
            self._running.pop(task.activity_id, None)

    def _result(self, task: worker_pb2.ActivityTask, **outcome: Any) -> None:
        self._send(worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
            activity_id=task.activity_id, session_id=task.session_id, **outcome)))
        self._note("activity_finished", activity_id=task.activity_id,
                   outcome="failure" if "failure" in outcome else "result")

    async def _heartbeat(self) -> None:
        await self.registered.wait()
        while not self.stream_done.is_set():
            assert self.interval is not None
            if self.heartbeat_every is not None:
                await asyncio.sleep(self.heartbeat_every)
                if self.heartbeating and not self.stream_done.is_set():
                    self._send(worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()))
                    self.heartbeats_sent += 1
                continue
            # Wake early when the server shortens the interval (a session with a small
            # heartbeat_timeout arrived): the old, longer wait would let that session expire.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation racing its timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._interval_changed.wait()
            self._interval_changed.clear()
            if self.heartbeating and not self.stream_done.is_set():
                self._send(worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()))
                self.heartbeats_sent += 1
                if self._emit is not None:
                    self._emit({"event": "heartbeat", "n": self.heartbeats_sent})


# --------------------------------------------------------------------- process mode


def _print(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _commands(worker: RawWorker) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "goodbye":
            await worker.goodbye(drain=False)
        elif line == "goodbye drain":
            await worker.goodbye(drain=True)
        elif line == "close":
            worker.close()
        elif line == "pause":
            worker.pause()
        elif line == "resume":
            worker.resume()
        elif line == "stop reading":
            worker.stop_reading()
        elif line == "read":
            worker.start_reading()
        _print({"event": "command", "command": line})


async def _main(args: argparse.Namespace) -> int:
    worker = RawWorker(args.target, args.task_queue, worker_id=args.worker_id, capacity=args.capacity,
                       host_name=args.host_name, emit=_print, read=not args.no_read,
                       heartbeat_every=args.heartbeat_every,
                       capacities={k: int(v) for k, v in (p.split("=", 1) for p in args.resource)},
                       labels=dict(p.split("=", 1) for p in args.label))
    await worker.start(wait=False)
    commands = asyncio.create_task(_commands(worker))
    await worker.stream_done.wait()
    commands.cancel()
    await worker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one raw worker as a process until its stream ends."""
    parser = argparse.ArgumentParser(prog="rawworker", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of sessiond")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--worker-id", default="", help="stable worker id (empty: the server assigns one)")
    parser.add_argument("--capacity", type=int, default=1, help="max_concurrent_sessions")
    parser.add_argument("--host-name", default="", help="host name to declare (empty: the server's)")
    parser.add_argument("--resource", action="append", default=[], metavar="NAME=N", help="a capacity (repeatable)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    parser.add_argument("--no-read", action="store_true", help="stop reading the stream after Registered")
    parser.add_argument("--heartbeat-every", type=float, default=None,
                        help="heartbeat at this fixed period (seconds) instead of the server's interval")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
