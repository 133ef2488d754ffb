"""Worker registry and placement: the most-free eligible worker of a task queue in O(log n).

Each task queue keeps a max-heap of (free sessions, worker) entries. An entry is valid only
while the worker's ``version`` matches; any change in free capacity or eligibility bumps the
version and pushes a fresh entry, so stale entries are skipped lazily.
"""

from __future__ import annotations

import heapq
import itertools

from sessiond.core.model import Worker, WorkerKey
from sessiond.core.resources import SESSIONS, ResourceVector


class WorkerRegistry:
    """Workers by key, and per task queue a candidate heap for placement."""

    __slots__ = ("_candidates", "_epochs", "_seq", "workers")

    def __init__(self) -> None:
        self.workers: dict[WorkerKey, Worker] = {}
        # task queue -> heap of (-free sessions, seq, version, worker)
        self._candidates: dict[str, list[tuple[int, int, int, Worker]]] = {}
        self._seq = itertools.count()
        self._epochs = itertools.count(1)

    def connect(self, key: WorkerKey, identity: str, host_name: str, capacity: ResourceVector,
                now: float) -> Worker:
        """Add a worker; the caller has already dropped any previous connection with this key."""
        worker = Worker(key=key, epoch=next(self._epochs), identity=identity, host_name=host_name,
                        capacity=capacity, connected_at=now, last_seen=now)
        self.workers[key] = worker
        self.touch(worker)
        return worker

    def remove(self, worker: Worker) -> None:
        """Forget a disconnected worker."""
        worker.connected = False
        self.touch(worker)
        if self.workers.get(worker.key) is worker:
            del self.workers[worker.key]

    def touch(self, worker: Worker) -> None:
        """Record that the worker's free capacity or eligibility changed."""
        worker.version += 1
        free = worker.free[SESSIONS]
        if worker.eligible and free > 0:
            heap = self._candidates.setdefault(worker.key.task_queue, [])
            heapq.heappush(heap, (-free, next(self._seq), worker.version, worker))
            if len(heap) > 4 * len(self.workers) + 64:
                self._compact(worker.key.task_queue)

    def best(self, task_queue: str, demand: ResourceVector) -> Worker | None:
        """The eligible worker of ``task_queue`` with the most free sessions that fits ``demand``."""
        heap = self._candidates.get(task_queue)
        while heap:
            _, _, version, worker = heap[0]
            if version == worker.version and worker.eligible:
                return worker if worker.free.covers(demand) else None
            heapq.heappop(heap)
        return None

    def _compact(self, task_queue: str) -> None:
        heap = [e for e in self._candidates[task_queue] if e[2] == e[3].version and e[3].eligible]
        heapq.heapify(heap)
        self._candidates[task_queue] = heap
