"""In-process CPU cost of one activity in the library ``SessionWorker`` (no transport, no server).

    python -m bench.inprocess_libworker after
    PYTHONPATH=DIR/clients/python/src:DIR python -m bench.inprocess_libworker before   # another checkout

Feeds the worker's message handler ``ActivityTask`` messages as the server sends them (heartbeat
interval and incarnation set, a 100-byte ``binary/plain`` input, an ``async`` no-op activity), in
batches of 64 (64 in flight), and lets the loop run until every result is in the worker's outbox;
prints the min and median ``time.process_time`` per activity over 7 repetitions of 6,400. What it
measures is the library's own Python on the activity path: dispatch, the activity's context, the
converter, the result message, the outbox. grpc's reads and writes are not included.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from typing import Any

from sessiond_client import SessionWorker
from sessiond_client._types import SessionInfo
from sessiond_client.api.v1 import session_pb2, worker_pb2

REPS = 7
BATCH = 64
BATCHES = 100


async def noop(data: bytes) -> bytes:
    """The no-op activity: returns its input."""
    return data


def _messages(session_id: str, count: int) -> list[worker_pb2.WorkerHeartbeatResponse]:
    payload = session_pb2.Payload(data=b"x" * 100)
    payload.metadata["encoding"] = b"binary/plain"
    messages = []
    for i in range(count):
        message = worker_pb2.WorkerHeartbeatResponse(server_incarnation="inc-1")
        message.heartbeat_interval.seconds = 10
        task = message.activity_task
        task.activity_id = f"00000000-0000-4000-8000-{i:012d}"
        task.session_id = session_id
        task.activity_type = "noop"
        task.input.CopyFrom(payload)
        task.start_to_close_timeout.seconds = 60
        task.attempt = 1
        messages.append(message)
    return messages


async def _main(label: str) -> None:
    worker: Any = SessionWorker("127.0.0.1:1", "q", {"noop": noop})
    session = session_pb2.Session(session_id="s-1", task_queue="q")
    worker._sessions["s-1"] = SessionInfo._from_proto(session)
    worker._records["s-1"] = session
    worker._worker_id = "w1"
    # As run() sets them: the loop and its thread.
    worker._loop = asyncio.get_running_loop()
    worker._loop_thread = threading.get_ident()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    worker._outbox = outbox
    messages = _messages("s-1", BATCH * BATCHES)

    async def rep() -> None:
        for first in range(0, len(messages), BATCH):
            for message in messages[first:first + BATCH]:
                worker._on_message(message)
            await asyncio.sleep(0)  # every activity task runs its one step (FIFO: they were scheduled first)
            assert outbox.qsize() == BATCH, "a no-op activity reports in one loop iteration"
            while not outbox.empty():
                result = outbox.get_nowait()
                assert result.activity_result.HasField("result")
            # Let finished activities' done-callbacks run (as the next read would).
            await asyncio.sleep(0)

    await rep()
    gc.collect()
    gc.freeze()
    per_activity = []
    for _ in range(REPS):
        started = time.process_time()
        await rep()
        per_activity.append((time.process_time() - started) / len(messages) * 1e6)
    assert not worker._running, "every activity finished"
    per_activity.sort()
    print(f"{label} µs per activity: min {per_activity[0]:.1f} median {per_activity[REPS // 2]:.1f}")


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else ""))
