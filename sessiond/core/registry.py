"""Worker registry: the connected workers by key, and the placement index over them.

The registry owns worker identity (keys, epochs); where a new session may go is the
:class:`~sessiond.core.placement.CandidateIndex`'s business, kept current through :meth:`touch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from sessiond.core.model import Worker, WorkerKey
from sessiond.core.placement import CandidateIndex
from sessiond.core.resources import ResourceVector


class WorkerRegistry:
    """Workers by key, and the candidates for placement."""

    __slots__ = ("_epochs", "candidates", "workers")

    def __init__(self) -> None:
        self.workers: dict[WorkerKey, Worker] = {}
        self.candidates = CandidateIndex()
        self._epochs = itertools.count(1)

    def connect(self, key: WorkerKey, identity: str, host_name: str, capacity: ResourceVector,
                now: float, labels: Mapping[str, str] | None = None) -> Worker:
        """Add a worker; the caller has already dropped any previous connection with this key."""
        worker = Worker(key=key, epoch=next(self._epochs), identity=identity, host_name=host_name,
                        capacity=capacity, connected_at=now, last_seen=now, labels=dict(labels or {}))
        self.workers[key] = worker
        self.candidates.add(worker)
        self.touch(worker)
        return worker

    def remove(self, worker: Worker) -> None:
        """Forget a disconnected worker."""
        worker.connected = False
        self.touch(worker)
        self.candidates.remove(worker)
        if self.workers.get(worker.key) is worker:
            del self.workers[worker.key]

    def touch(self, worker: Worker) -> None:
        """Record that the worker's free capacity or eligibility changed."""
        self.candidates.touch(worker)
