"""In-process CPU cost of one activity round trip through the servicer and the engine (no transport).

    python -m bench.inprocess_activity after
    PYTHONPATH=DIR:DIR/clients/python/src python bench/inprocess_activity.py before   # another checkout

ExecuteActivity is called on the servicer, the task is taken from the worker's connection and its
result handed to ``Engine.worker_message``, 3,000 times per repetition; prints the min and median
``time.process_time`` per activity over 7 repetitions (the harness's own cost is included, the same
on both sides). No grpc, no protobuf (de)serialization of the wire: only sessiond's Python on the path.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core.model import WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.server.engine import Engine
from sessiond.server.servicer import SessionServicer

REPS = 7
PER_REP = 3000


class _Context:
    """The two context methods the servicer calls."""

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None


async def _main(label: str) -> None:
    engine = Engine(ServerConfig())
    servicer = SessionServicer(engine)
    conn = engine.connect_worker(WorkerRegistration("q", "w1", "id", "h", ResourceVector.sessions(1000)))
    context: Any = _Context()
    created = await servicer.CreateSession(session_service_pb2.CreateSessionRequest(task_queue="q"), context)
    while conn.queued_bytes:  # Registered, SessionStarted
        await conn.next()
    payload = session_pb2.Payload(data=b"x" * 100)
    payload.metadata["encoding"] = b"binary/plain"
    request = session_service_pb2.ExecuteActivityRequest(
        session_id=created.session.session_id, activity_type="noop", input=payload)

    async def one() -> None:
        call = asyncio.ensure_future(servicer.ExecuteActivity(request, context))
        await asyncio.sleep(0)
        message = await conn.next()
        assert message is not None
        task = message.activity_task
        engine.worker_message(conn, worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
            activity_id=task.activity_id, session_id=task.session_id, result=task.input)))
        await call

    for _ in range(2000):
        await one()
    gc.collect()
    gc.freeze()
    per_activity = []
    for _ in range(REPS):
        started = time.process_time()
        for _ in range(PER_REP):
            await one()
        per_activity.append((time.process_time() - started) / PER_REP * 1e6)
    per_activity.sort()
    print(f"{label} µs per activity: min {per_activity[0]:.1f} median {per_activity[REPS // 2]:.1f}")


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else ""))
