"""Waiting Creates and Recreates: FIFO queues, their heads, holders and deadlines.

Pure bookkeeping: which waiters exist, in what order, and when each gives up. Which of them goes
where is :mod:`sessiond.core.placement`'s policy. Creates of a task queue are kept in one FIFO per
*kind* — the same resources and selector — so the oldest of each kind (its head) is found without
walking the others; Recreates in one FIFO per target worker. A waiter that leaves (placed,
expired, cancelled) is marked done and trimmed off the front of its queue lazily; a queue left
without live waiters is dropped at once, because queue names, selectors and recreate tokens come
from callers and per-name state must not outlive its waiters.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from typing import TypeVar

from sessiond.core.deadlines import DeadlineQueue, LowWater
from sessiond.core.model import Waiter, WorkerKey
from sessiond.core.resources import ResourceVector
from sessiond.core.selector import Selector

K = TypeVar("K")
Kind = tuple[ResourceVector, Selector]


class WaiterQueues:
    """Every live waiter by id, in FIFO order per (task queue, kind) for Creates, per worker for Recreates."""

    __slots__ = ("_arrivals", "_by_queue", "_by_worker", "_deadlines", "_holders", "_per_queue", "_waiters")

    def __init__(self, low_water: LowWater | None = None) -> None:
        """``low_water``: lowered by every waiter's deadline (see :class:`~sessiond.core.deadlines.LowWater`)."""
        self._waiters: dict[str, Waiter] = {}
        # task queue -> kind -> FIFO; a dict keeps kinds in the order they first waited.
        self._by_queue: dict[str, dict[Kind, deque[Waiter]]] = {}
        self._by_worker: dict[WorkerKey, deque[Waiter]] = {}
        # task queue -> the heads that hold (see core.placement), oldest first.
        self._holders: dict[str, list[Waiter]] = {}
        self._deadlines: DeadlineQueue[str] = DeadlineQueue(low_water)
        self._arrivals = itertools.count(1)
        # task queue -> live waiters on it, Creates and Recreates (for the per-queue cap).
        self._per_queue: dict[str, int] = {}

    def arrival(self) -> int:
        """The arrival number of a new request (Creates placed at once take one too)."""
        return next(self._arrivals)

    def add(self, waiter: Waiter) -> None:
        """Append a new waiter to the back of its queue; it gives up at ``waiter.deadline``."""
        self._waiters[waiter.waiter_id] = waiter
        self._per_queue[waiter.task_queue] = self._per_queue.get(waiter.task_queue, 0) + 1
        if waiter.target is not None:
            self._by_worker.setdefault(waiter.target, deque()).append(waiter)
        else:
            kinds = self._by_queue.setdefault(waiter.task_queue, {})
            kinds.setdefault((waiter.demand, waiter.selector), deque()).append(waiter)
        self._deadlines.set(waiter.waiter_id, waiter.deadline)

    def drop(self, waiter: Waiter) -> bool:
        """The waiter leaves: placed, expired or cancelled. Returns True if it was holding (the
        workers it held back may now take others: serve the whole task queue)."""
        waiter.done = True
        if waiter.target is not None:
            queue = self._by_worker.get(waiter.target)
            if queue is not None and not _has_live(queue):
                del self._by_worker[waiter.target]
        else:
            kinds = self._by_queue.get(waiter.task_queue)
            if kinds is not None:
                kind = (waiter.demand, waiter.selector)
                queue = kinds.get(kind)
                if queue is not None and not _has_live(queue):
                    del kinds[kind]
                    if not kinds:
                        del self._by_queue[waiter.task_queue]
        del self._waiters[waiter.waiter_id]
        self._deadlines.remove(waiter.waiter_id)
        left = self._per_queue[waiter.task_queue] - 1
        if left:
            self._per_queue[waiter.task_queue] = left
        else:
            del self._per_queue[waiter.task_queue]
        if not waiter.holding:
            return False
        holders = self._holders[waiter.task_queue]
        holders.remove(waiter)
        if not holders:
            del self._holders[waiter.task_queue]
        return True

    def hold(self, head: Waiter) -> None:
        """The head reached its skip limit: from now on it holds the workers it could use."""
        head.holding = True
        holders = self._holders.setdefault(head.task_queue, [])
        bisect.insort(holders, head, key=lambda w: w.seq)

    def get(self, waiter_id: str) -> Waiter | None:
        """The live waiter with this id, or None."""
        return self._waiters.get(waiter_id)

    def count(self, task_queue: str) -> int:
        """How many Creates and Recreates wait on ``task_queue``."""
        return self._per_queue.get(task_queue, 0)

    def has_any(self, task_queue: str) -> bool:
        """True when a Create waits on ``task_queue``."""
        return task_queue in self._by_queue

    def has_kind(self, task_queue: str, demand: ResourceVector, selector: Selector) -> bool:
        """True when a Create asking for the same thing waits on ``task_queue`` (a new one queues behind it)."""
        kinds = self._by_queue.get(task_queue)
        return kinds is not None and (demand, selector) in kinds

    def heads(self, task_queue: str) -> list[Waiter]:
        """The oldest waiting Create of each kind on ``task_queue`` (in the order the kinds first waited)."""
        kinds = self._by_queue.get(task_queue)
        return [] if kinds is None else [queue[0] for queue in kinds.values()]

    def head_of(self, waiter: Waiter) -> Waiter | None:
        """The live head of ``waiter``'s kind now (after it left: the next one), or None."""
        kinds = self._by_queue.get(waiter.task_queue)
        queue = None if kinds is None else kinds.get((waiter.demand, waiter.selector))
        return queue[0] if queue else None

    def holders(self, task_queue: str) -> list[Waiter]:
        """The holding heads of ``task_queue``, oldest first (the list itself: do not change it)."""
        return self._holders.get(task_queue, _NONE)

    def for_worker(self, key: WorkerKey) -> deque[Waiter] | None:
        """The Recreates waiting for worker ``key``, oldest first (done ones may still sit in it)."""
        return self._by_worker.get(key)

    def has_live_for_worker(self, key: WorkerKey) -> bool:
        """True when a Recreate waits for worker ``key``."""
        return key in self._by_worker

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
        return set(self._by_queue) | set(self._holders) | set(self._per_queue)

    @property
    def worker_keys(self) -> set[WorkerKey]:
        """Workers with per-worker state (for tests: none without live waiters)."""
        return set(self._by_worker)


_NONE: list[Waiter] = []


def _has_live(queue: deque[Waiter]) -> bool:
    while queue and queue[0].done:
        queue.popleft()
    return bool(queue)
