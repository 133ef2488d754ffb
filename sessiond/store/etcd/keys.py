"""The etcd store's key layout under one cluster's prefix (distributed.md §3.1).

Names are percent-encoded, so a ``/`` in a task queue or worker id never makes two keys collide.
The table of keys, values and leases is in :mod:`sessiond.store.etcd.store`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from sessiond.store.base import WorkerKey

__all__ = ["Keys"]


def _part(name: str) -> bytes:
    return quote(name, safe="").encode()


@dataclass(frozen=True)
class Keys:
    """The key layout under one cluster's prefix."""

    prefix: bytes

    def replica(self, replica_id: str) -> bytes:
        return self.prefix + b"replicas/" + _part(replica_id)

    @property
    def replicas(self) -> bytes:
        return self.prefix + b"replicas/"

    def worker(self, worker: WorkerKey) -> bytes:
        return self.prefix + b"workers/" + _part(worker[0]) + b"/" + _part(worker[1])

    @property
    def workers(self) -> bytes:
        return self.prefix + b"workers/"

    def parse_worker(self, key: bytes) -> WorkerKey:
        queue, _, worker = key[len(self.workers):].decode().partition("/")
        return unquote(queue), unquote(worker)

    def replica_worker(self, replica_id: str, worker: WorkerKey) -> bytes:
        return self.prefix + b"rworkers/" + _part(replica_id) + b"/" + _part(worker[0]) + b"/" + _part(worker[1])

    def replica_workers(self, replica_id: str) -> bytes:
        return self.prefix + b"rworkers/" + _part(replica_id) + b"/"

    def session(self, session_id: str) -> bytes:
        return self.prefix + b"sessions/" + _part(session_id)

    def slots(self, worker: WorkerKey) -> bytes:
        return self.prefix + b"wsess/" + _part(worker[0]) + b"/" + _part(worker[1]) + b"/"

    def slot(self, worker: WorkerKey, session_id: str) -> bytes:
        return self.slots(worker) + _part(session_id)

    def owner(self, owner: str) -> bytes:
        return self.prefix + b"owners/" + _part(owner)

    def request(self, request_id: str) -> bytes:
        return self.prefix + b"requests/" + _part(request_id)
