"""The outbound side of one worker stream: the messages the engine queued for that worker."""

from __future__ import annotations

import asyncio
from collections import deque

from sessiond_client.api.v1 import worker_pb2

from sessiond.core.model import WorkerKey


class WorkerConnection:
    """The outbound side of one worker stream: messages the stream handler drains, in order.

    Not an ``asyncio.Queue``: that is four deques and an Event (about 3 KB) per connected worker,
    while an idle worker needs no buffer at all. One consumer (the stream handler) waits at a time.
    """

    __slots__ = ("_pending", "_waiter", "closed", "epoch", "key")

    def __init__(self, key: WorkerKey, epoch: int) -> None:
        self.key = key
        self.epoch = epoch
        self.closed = False
        # Created on the first message and dropped when drained (None = empty).
        self._pending: deque[worker_pb2.WorkerHeartbeatResponse | None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: worker_pb2.WorkerHeartbeatResponse) -> None:
        """Queue a message for the worker (dropped once the connection is closed)."""
        if not self.closed:
            self._push(message)

    def close(self) -> None:
        """End the stream after the messages already queued."""
        if not self.closed:
            self.closed = True
            self._push(None)

    def _push(self, item: worker_pb2.WorkerHeartbeatResponse | None) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> worker_pb2.WorkerHeartbeatResponse | None:
        """The next message to send, or None when the stream should end."""
        while not self._pending:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        pending = self._pending
        item = pending.popleft()
        if not pending:
            self._pending = None
        return item


__all__ = ["WorkerConnection"]
