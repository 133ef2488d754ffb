"""Waiting Creates and Recreates: FIFO queues per task queue and per target worker, with deadlines.

Pure bookkeeping: which waiters exist, in what order, and when each gives up. Whether a waiter
fits a worker, and what placing it does, is the table's business. A waiter that leaves (placed,
expired, cancelled) is marked done and trimmed off the front of its queue lazily; a queue left
without live waiters is dropped at once, because queue names and recreate tokens come from
callers and per-name state must not outlive its waiters.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

from sessiond.core.deadlines import DeadlineQueue
from sessiond.core.model import Waiter, WorkerKey

K = TypeVar("K")


class WaiterQueues:
    """Every live waiter by id, in FIFO order per task queue (Creates) or per worker (Recreates)."""

    __slots__ = ("_by_queue", "_by_worker", "_deadlines", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._by_queue: dict[str, deque[Waiter]] = {}
        self._by_worker: dict[WorkerKey, deque[Waiter]] = {}
        self._deadlines: DeadlineQueue[str] = DeadlineQueue()

    def add(self, waiter: Waiter) -> None:
        """Append a new waiter to the back of its queue; it gives up at ``waiter.deadline``."""
        self._waiters[waiter.waiter_id] = waiter
        if waiter.target is not None:
            self._by_worker.setdefault(waiter.target, deque()).append(waiter)
        else:
            self._by_queue.setdefault(waiter.task_queue, deque()).append(waiter)
        self._deadlines.set(waiter.waiter_id, waiter.deadline)

    def drop(self, waiter: Waiter) -> None:
        """The waiter leaves: placed, expired or cancelled. Idempotent callers check ``get`` first."""
        waiter.done = True
        if waiter.target is not None:
            _trim(self._by_worker, waiter.target)
        else:
            _trim(self._by_queue, waiter.task_queue)
        del self._waiters[waiter.waiter_id]
        self._deadlines.remove(waiter.waiter_id)

    def get(self, waiter_id: str) -> Waiter | None:
        """The live waiter with this id, or None."""
        return self._waiters.get(waiter_id)

    def for_queue(self, task_queue: str) -> deque[Waiter] | None:
        """The Creates waiting on ``task_queue``, oldest first (done ones may still sit in it)."""
        return self._by_queue.get(task_queue)

    def for_worker(self, key: WorkerKey) -> deque[Waiter] | None:
        """The Recreates waiting for worker ``key``, oldest first (done ones may still sit in it)."""
        return self._by_worker.get(key)

    def has_live_for_queue(self, task_queue: str) -> bool:
        """True when a Create waits on ``task_queue``."""
        return _has_live(self._by_queue.get(task_queue))

    def has_live_for_worker(self, key: WorkerKey) -> bool:
        """True when a Recreate waits for worker ``key``."""
        return _has_live(self._by_worker.get(key))

    def pop_due(self, now: float) -> list[Waiter]:
        """The waiters whose deadline is at or before ``now`` (they are still queued: drop them)."""
        return [self._waiters[wid] for wid in self._deadlines.pop_due(now)]

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live waiter, or None."""
        return self._deadlines.peek()

    def __len__(self) -> int:
        return len(self._waiters)

    def all(self) -> list[Waiter]:
        """Every live waiter, oldest first (a copy)."""
        return list(self._waiters.values())

    @property
    def queue_names(self) -> set[str]:
        """Task queues with per-queue state (for tests: none without live waiters)."""
        return set(self._by_queue)

    @property
    def worker_keys(self) -> set[WorkerKey]:
        """Workers with per-worker state (for tests: none without live waiters)."""
        return set(self._by_worker)


def _has_live(queue: deque[Waiter] | None) -> bool:
    while queue and queue[0].done:
        queue.popleft()
    return bool(queue)


def _trim(queues: dict[K, deque[Waiter]], name: K) -> None:
    queue = queues.get(name)
    if queue is not None and not _has_live(queue):
        del queues[name]
