"""The outbound side of one worker stream: the messages the engine queued for that worker.

Bounded (SPEC §6.1, "every queue is bounded"): it counts the bytes queued and not yet taken by
the stream, and the engine refuses new activity tasks past ``--max-worker-backlog``
(WORKER_BACKLOGGED). A queued task can be taken out again (its activity timed out or its caller
gave up: it is then never sent), and :meth:`WorkerConnection.discard` lets go of everything when
the stream is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sessiond_client.api.v1 import worker_pb2

from sessiond.core.model import WorkerKey
from sessiond.core.resources import ResourceVector

# What a control message (session started/ended, cancel, acks) counts for in the backlog: an upper
# bound of its size, so that no serialisation is needed to count it.
CONTROL_MESSAGE_BYTES = 512

_ACK = "ack"
_ONE_SESSION = ResourceVector.one_session()


class _Entry:
    """One queued message: ``message`` is None once taken out; ``tag`` is its activity id, or "ack"."""

    __slots__ = ("message", "size", "tag")

    def __init__(self, message: worker_pb2.WorkerHeartbeatResponse, size: int, tag: str | None) -> None:
        self.message: worker_pb2.WorkerHeartbeatResponse | None = message
        self.size = size
        self.tag = tag


class WorkerConnection:
    """The messages the stream handler drains, in order, and their byte count.

    Not an ``asyncio.Queue``: that is four deques and an Event (about 3 KB) per connected worker,
    while an idle worker needs no buffer at all. One consumer (the stream handler) waits at a time.
    """

    __slots__ = ("_pending", "_tasks", "_waiter", "ack_queued", "backlogged", "capacity", "closed", "epoch", "key",
                 "queued_bytes")

    def __init__(self, key: WorkerKey, epoch: int, capacity: ResourceVector = _ONE_SESSION) -> None:
        self.key = key
        self.epoch = epoch
        # What the worker declared (metrics count it while the stream lasts).
        self.capacity = capacity
        self.closed = False
        self.queued_bytes = 0
        # Over the byte bound: the worker takes no new sessions until the stream drains.
        self.backlogged = False
        # Created on the first message and dropped when drained (None = empty).
        self._pending: deque[_Entry | None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Activity tasks still queued, by activity id (None = none).
        self._tasks: dict[str, _Entry] | None = None
        self.ack_queued = False

    def put(self, message: worker_pb2.WorkerHeartbeatResponse) -> None:
        """Queue a control message for the worker (dropped once the connection is closed)."""
        if not self.closed:
            self._push(_Entry(message, CONTROL_MESSAGE_BYTES, None))

    def put_ack(self, message: worker_pb2.WorkerHeartbeatResponse) -> None:
        """Queue a heartbeat answer, unless one is queued already: a worker that does not read
        holds at most one, however long it keeps heartbeating."""
        if not self.ack_queued and not self.closed:
            self.ack_queued = True
            self._push(_Entry(message, CONTROL_MESSAGE_BYTES, _ACK))

    def has_room(self, size: int, limit: int) -> bool:
        """True if a task of ``size`` bytes may be queued under the byte bound ``limit``. An empty
        queue always takes one task, so a task up to the message-size limit can always be sent."""
        return self.queued_bytes == 0 or self.queued_bytes + size <= limit

    def put_task(self, activity_id: str, message: worker_pb2.WorkerHeartbeatResponse, size: int) -> None:
        """Queue an activity task counted as ``size`` bytes (the caller checked :meth:`has_room`)."""
        if self.closed:
            return
        entry = _Entry(message, size, activity_id)
        if self._tasks is None:
            self._tasks = {}
        self._tasks[activity_id] = entry
        self._push(entry)

    def drop_task(self, activity_id: str) -> bool:
        """Take a task out of the queue; True if it was still queued (so it will never be sent)."""
        entry = self._tasks.pop(activity_id, None) if self._tasks is not None else None
        if entry is None:
            return False
        entry.message = None  # skipped by next(); its memory goes now, not when the worker reads
        self.queued_bytes -= entry.size
        return True

    def close(self) -> None:
        """End the stream after the messages already queued."""
        if not self.closed:
            self.closed = True
            self._push(None)

    def discard(self) -> None:
        """The stream is gone: let go of everything queued, and end the consumer if one waits."""
        self.closed = True
        self._pending = deque([None])
        self._tasks = None
        self.queued_bytes = 0
        self._wake()

    def _push(self, entry: _Entry | None) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(entry)
        if entry is not None:
            self.queued_bytes += entry.size
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> worker_pb2.WorkerHeartbeatResponse | None:
        """The next message to send, or None when the stream should end."""
        while True:
            while not self._pending:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            pending = self._pending
            entry = pending.popleft()
            if not pending:
                self._pending = None
            if entry is None:
                return None
            message = entry.message
            if message is None:
                continue  # a task taken out while queued
            self.queued_bytes -= entry.size
            tag = entry.tag
            if tag == _ACK:
                self.ack_queued = False
            elif tag is not None and self._tasks is not None:
                del self._tasks[tag]
            return message


__all__ = ["CONTROL_MESSAGE_BYTES", "WorkerConnection"]
