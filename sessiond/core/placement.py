"""Placement candidates: the most-free eligible worker of a task queue in O(log n).

Each task queue keeps a max-heap of (free sessions, worker) entries. An entry is valid only
while the worker's ``version`` matches; any change in free capacity or eligibility bumps the
version and pushes a fresh entry, so stale entries are skipped lazily.
"""

from __future__ import annotations

import heapq
import itertools

from sessiond.core.model import Worker
from sessiond.core.resources import SESSIONS, ResourceVector


class CandidateIndex:
    """Per task queue, the heap of workers that may take a new session."""

    __slots__ = ("_candidates", "_seq")

    def __init__(self) -> None:
        # task queue -> heap of (-free sessions, seq, version, worker)
        self._candidates: dict[str, list[tuple[int, int, int, Worker]]] = {}
        self._seq = itertools.count()

    def touch(self, worker: Worker, workers: int) -> None:
        """Record that the worker's free capacity or eligibility changed (``workers``: how many
        are registered, which bounds the heap before it is compacted)."""
        worker.version += 1
        free = worker.free[SESSIONS]
        if worker.eligible and free > 0:
            heap = self._candidates.setdefault(worker.key.task_queue, [])
            heapq.heappush(heap, (-free, next(self._seq), worker.version, worker))
            if len(heap) > 4 * workers + 64:
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
