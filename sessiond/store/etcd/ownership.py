"""Who owns what, as one replica knows it: the mirrors of ``workers/`` and ``replicas/`` (followed
by watches), this replica's own fences, and its self-fencing.

The fences and the worker mirror live together on purpose: every mirror event about a worker can
take this replica's fence away (a takeover) or move it (its own re-put, seen first), and every
fence the writer moves or claims updates the mirror. Splitting them would only pass that state
back and forth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from sessiond.store.base import WorkerKey
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdCompactedError, EtcdError
from sessiond.store.etcd.keys import Keys
from sessiond.store.etcd.ops import prefix_end
from sessiond.store.etcd.watch import PUT
from sessiond.store.records import store_pb2

__all__ = ["Ownership"]

log = logging.getLogger("sessiond.store.etcd")


class Ownership:
    """One replica's view of worker and replica ownership, and its fences.

    Args:
        client: the store's client.
        keys: the cluster's key layout.
        replica_id: this replica's id.
    """

    def __init__(self, client: EtcdClient, keys: Keys, replica_id: str) -> None:
        self.client = client
        self.keys = keys
        self.replica_id = replica_id
        self.fenced = asyncio.Event()
        self.on_fenced: list[Callable[[str], None]] = []
        self.on_worker_lost: list[Callable[[WorkerKey], None]] = []
        self.fences: dict[WorkerKey, int] = {}
        self.entries: dict[WorkerKey, bytes] = {}  # the worker keys this replica wrote (for re-puts)
        self.workers: dict[WorkerKey, tuple[str, int]] = {}  # mirror: worker -> (owner, mod revision)
        self.replicas: dict[str, str] = {}  # mirror: replica id -> address
        self._workers_changed = asyncio.Event()
        self.closing = False
        """Set when the store closes: the mirrors stop following."""

    # ------------------------------------------------------------------ this replica's fences

    def fence_of(self, worker: WorkerKey) -> int | None:
        """This replica's fence for ``worker`` (None: it does not own it)."""
        return self.fences.get(worker)

    def drop(self, worker: WorkerKey) -> None:
        """Stop writing about ``worker`` (it moved away or left): later writes answer FENCE_LOST."""
        self.fences.pop(worker, None)
        self.entries.pop(worker, None)

    def moved_fence(self, worker: WorkerKey, revision: int) -> None:
        """This replica re-put ``worker``'s key at ``revision``: its fence moves there (never back)."""
        if worker in self.fences:
            self.fences[worker] = max(self.fences[worker], revision)
            self.workers[worker] = (self.replica_id, self.fences[worker])

    def lose(self, worker: WorkerKey) -> None:
        """Another replica took ``worker`` (or nobody owns it): drop the fence, tell the callbacks."""
        self.fences.pop(worker, None)
        self.entries.pop(worker, None)
        for callback in list(self.on_worker_lost):
            callback(worker)

    def fence(self, reason: str) -> None:
        """Fence this replica: drop every fence and call the ``on_fenced`` callbacks (once)."""
        if self.fenced.is_set():
            return
        log.warning("etcd store: replica %s fenced itself: %s", self.replica_id, reason)
        self.fenced.set()
        self.fences.clear()
        for callback in list(self.on_fenced):
            callback(reason)

    # ------------------------------------------------------------------ the mirrors

    def owner_of(self, worker: WorkerKey) -> str | None:
        """The replica owning ``worker`` per the mirror."""
        entry = self.workers.get(worker)
        return None if entry is None else entry[0]

    async def load_workers(self) -> int:
        reply = await self.client.get_prefix(self.keys.workers)
        self.workers = {}
        for kv in reply.kvs:
            self.workers[self.keys.parse_worker(kv.key)] = (
                store_pb2.WorkerEntry.FromString(kv.value).owner_replica, kv.mod_revision)
        for worker, fence in list(self.fences.items()):
            seen = self.workers.get(worker)
            if seen is not None and seen[0] == self.replica_id:
                self.moved_fence(worker, seen[1])  # still ours (re-put meanwhile)
            elif seen is None or seen[1] > fence:
                self.lose(worker)
        return reply.header.revision

    async def load_replicas(self) -> int:
        reply = await self.client.get_prefix(self.keys.replicas)
        self.replicas = {}
        for kv in reply.kvs:
            record = store_pb2.ReplicaRecord.FromString(kv.value)
            self.replicas[record.replica_id] = record.address
        return reply.header.revision

    async def follow(self, prefix: bytes, revision: int, apply: Callable[[Sequence[pb.Event]], None],
                     reload: Callable[[], Any]) -> None:
        while not self.closing:  # (a cancel the client turns into an EtcdError must not keep it alive)
            try:
                async with await self.client.watch(prefix, prefix_end(prefix), start_revision=revision + 1) as watch:
                    async for batch in watch:
                        apply(batch.events)
                        revision = batch.revision
            except EtcdCompactedError:
                revision = await reload()
            except EtcdError as error:
                log.warning("etcd store: mirror of %s interrupted: %s", prefix.decode(errors="replace"), error)
                await asyncio.sleep(0.2)

    async def workers_changed(self) -> None:
        """Wait until the worker mirror changes."""
        await self._workers_changed.wait()

    def on_worker_events(self, events: Sequence[pb.Event]) -> None:
        changed, self._workers_changed = self._workers_changed, asyncio.Event()
        changed.set()
        for event in events:
            worker = self.keys.parse_worker(event.kv.key)
            owner = ""
            if event.type == PUT:
                owner = store_pb2.WorkerEntry.FromString(event.kv.value).owner_replica
                self.workers[worker] = (owner, event.kv.mod_revision)
            else:
                self.workers.pop(worker, None)
            fence = self.fences.get(worker)
            if fence is not None and event.kv.mod_revision > fence:
                if event.type == PUT and owner == self.replica_id:
                    self.moved_fence(worker, event.kv.mod_revision)  # our own re-put, seen first
                else:
                    self.lose(worker)

    def on_replica_events(self, events: Sequence[pb.Event]) -> None:
        for event in events:
            if event.type == PUT:
                record = store_pb2.ReplicaRecord.FromString(event.kv.value)
                self.replicas[record.replica_id] = record.address
            else:
                rid = unquote(event.kv.key[len(self.keys.replicas):].decode())
                self.replicas.pop(rid, None)
