"""The etcd store: a replica's fenced writes, its lease, and its mirrors of who owns what.

Keys live under ``/sessiond/<cluster>/`` (distributed.md §3.1; names percent-encoded, so a ``/`` in
a task queue or worker id never makes two keys collide):

=========================== ================================================ =========================
key                         value                                            lease
=========================== ================================================ =========================
``replicas/<rid>``          ``ReplicaRecord`` (address)                      the replica's lease
``workers/<q>/<w>``         ``WorkerEntry`` (owner replica, worker record)   none; mod revision = fence
``rworkers/<rid>/<q>/<w>``  empty: which workers a replica owns              none
``sessions/<sid>``          ``SessionEntry`` (worker, ``Session`` record)    none while OPEN, then a
                                                                             retention bucket
``wsess/<q>/<w>/<sid>``     empty: the open sessions of a worker (its slots) none
``owners/<owner>``          the session id holding the owner                 none
``requests/<request key>``  the session id the request placed                as ``sessions/<sid>``
=========================== ================================================ =========================

**Fencing** (§3.2): a :class:`~sessiond.store.base.ClaimWorker` commits only if ``workers/<q>/<w>``
was not rewritten since the revision the claimer read, and its own revision becomes this replica's
fence for the worker. Every later write about the worker (place, end) is one Txn that compares the
worker key's mod revision with that fence, so a replica that lost the worker (a takeover by another
replica, or this replica fenced itself) can never add or free a slot: ``|wsess/q/w/*| <= capacity``
at every revision. The owner and request-id uniqueness keys are created in the same Txn
(``CREATE == 0``), so "one open session per owner" and "a request id places once" hold across
replicas.

**Group commit**: :meth:`EtcdStore.commit` queues the batch for the one writer task, which packs
the operations of every waiting caller into as few Txns as possible (compares deduplicated, no key
written twice in one Txn, at most :data:`MAX_TXN_OPS` operations) and keeps up to
:data:`~sessiond.store.etcd.writer.MAX_IN_FLIGHT` Txns in flight on disjoint keys (a placement on a
worker also waits for the ends on it in flight): an idle replica pays one round trip, a busy one
batches and pipelines. A packed Txn whose compares fail is retried one operation at a time, in
order (a definite "not applied" is safe to retry; an unknown outcome never is: it is first made
definite, see :mod:`~sessiond.store.etcd.writer`).

**Self-fencing** (§3.5): etcd never expires a lease early, so the replica may act as an owner until
``send time of the last acknowledged renewal + TTL - margin``. Past that (or when etcd says the lease
is gone) the store drops every fence, refuses every further write (``FENCE_LOST``) and calls the
``on_fenced`` callbacks: the server closes its worker streams so the workers move to another replica.
It fences itself the same way when one of its long-lived tasks dies of a bug (:meth:`EtcdStore.supervise`):
a replica does not serve on without its writer, mirrors, lease guard or etcd streams.

The store is a composition, one job per module: :mod:`~sessiond.store.etcd.keys` (the key layout),
:mod:`~sessiond.store.etcd.writer` (group commit, claims, making lost outcomes definite),
:mod:`~sessiond.store.etcd.ownership` (the mirrors and this replica's fences),
:mod:`~sessiond.store.etcd.guard` (the lease guard), :mod:`~sessiond.store.etcd.retention` (the
retention buckets) and :mod:`~sessiond.store.etcd.orphans` (the janitor's reads and write). This
module keeps :class:`EtcdStore`: the lifecycle and the :class:`~sessiond.store.base.SessionStore`
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sessiond.store.base import (
    CommitResult,
    EndSession,
    StoredSession,
    StoreOp,
    WorkerKey,
    WorkerSnapshot,
)
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdCompactedError, EtcdError
from sessiond.store.etcd.guard import guard_lease
from sessiond.store.etcd.keys import Keys
from sessiond.store.etcd.lease import Lease
from sessiond.store.etcd.ops import created_at, get_op, prefix_end, put_op
from sessiond.store.etcd.orphans import Orphans
from sessiond.store.etcd.ownership import Ownership
from sessiond.store.etcd.retention import RetentionBuckets
from sessiond.store.etcd.watch import PUT
from sessiond.store.etcd.writer import MAX_TXN_OPS, TXN_TIMEOUT, Writer
from sessiond.store.records import store_pb2
from sessiond.supervise import supervise

if TYPE_CHECKING:
    from sessiond.store.base import SessionStore

__all__ = ["MAX_TXN_OPS", "EtcdStore", "Keys"]

log = logging.getLogger("sessiond.store.etcd")

STOP_PATIENCE = 1.0
"""Seconds :meth:`EtcdStore.close` waits for a cancelled task before cancelling it again."""


class EtcdStore:
    """A :class:`~sessiond.store.base.SessionStore` on etcd, for one replica of a cluster.

    Args:
        client: a connected client (the store closes it on :meth:`close`).
        prefix: the cluster's key prefix (``EtcdStoreSpec.key_prefix``).
        address: the host:port this replica is reached at (its ``replicas/`` record).
        lease_ttl: the replica lease's TTL in seconds.
        retention: how long a terminal session stays readable, in seconds.
        replica_id: this incarnation's id (default: a fresh one).
    """

    def __init__(self, client: EtcdClient, prefix: bytes, address: str, *, lease_ttl: int = 5,
                 retention: float = 3600.0, replica_id: str | None = None) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.address = address
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.lease_ttl = lease_ttl
        self.retention = retention
        self.lease: Lease | None = None
        self.ownership = Ownership(client, self.keys, self.replica_id)
        """The mirrors of who owns what, and this replica's fences."""
        buckets = RetentionBuckets(client, retention)
        self.writer = Writer(client, self.keys, self.ownership, buckets)
        """The group-commit writer."""
        self.orphans = Orphans(client, self.keys, self.ownership, buckets)
        """The janitor's reads and write."""
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def fenced(self) -> asyncio.Event:
        """Set once this replica fenced itself (it then writes nothing more)."""
        return self.ownership.fenced

    @property
    def on_fenced(self) -> list[Callable[[str], None]]:
        """Called with the reason when this replica fences itself."""
        return self.ownership.on_fenced

    @property
    def on_worker_lost(self) -> list[Callable[[WorkerKey], None]]:
        """Called with a worker this replica owned and another replica took over."""
        return self.ownership.on_worker_lost

    @property
    def test_unfenced(self) -> bool:
        """Test-only: True makes places and ends skip the fence (a replica that lost the worker
        writes anyway): the negative control of the hard-limit tests. Never set otherwise."""
        return self.writer.test_unfenced

    @test_unfenced.setter
    def test_unfenced(self, value: bool) -> None:
        self.writer.test_unfenced = value

    @property
    def txns(self) -> int:
        """Txns the writer sent and etcd answered."""
        return self.writer.txns

    @property
    def ops(self) -> int:
        """Operations committed."""
        return self.writer.ops

    @property
    def resolving(self) -> int:
        """Operations whose Txn answer was lost and that are being made definite now."""
        return self.writer.resolving

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Grant this replica's lease, register it, fill the mirrors and start the writer."""
        self.lease = await self.client.grant_lease(self.lease_ttl)
        record = store_pb2.ReplicaRecord(replica_id=self.replica_id, address=self.address, start_time=time.time())
        await self.client.put(self.keys.replica(self.replica_id), record.SerializeToString(), lease=self.lease.id)
        mirrors = self.ownership
        workers_rev = await mirrors.load_workers()
        replicas_rev = await mirrors.load_replicas()
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="etcd-store-writer"),
            asyncio.create_task(mirrors.follow(self.keys.workers, workers_rev, mirrors.on_worker_events,
                                               mirrors.load_workers), name="etcd-store-workers"),
            asyncio.create_task(mirrors.follow(self.keys.replicas, replicas_rev, mirrors.on_replica_events,
                                               mirrors.load_replicas), name="etcd-store-replicas"),
            asyncio.create_task(guard_lease(self.client, self.lease, mirrors.fence), name="etcd-store-lease"),
        ]
        # Without its writer, its mirrors or its lease guard a replica would write nothing, route by
        # stale owners, see live replicas as gone, or outlive its lease: any end other than close()'s
        # cancel (or the guard's own fencing) fences it. The client's streams likewise.
        for task in self._tasks:
            self.supervise(task)
        self.client.on_stream_failed.append(self.fence)

    def supervise(self, task: asyncio.Task[Any], stopping: Callable[[], bool] = lambda: False) -> None:
        """Fence this replica if ``task``, a loop of this replica meant to run until it stops, ends
        while neither ``stopping()`` nor :meth:`close` (logged once at ERROR, with the traceback;
        see :func:`sessiond.supervise.supervise`). Once fenced, nothing more is reported."""
        supervise(task, stopping=lambda: stopping() or self._closing or self.fenced.is_set(), fail=self.fence,
                  log=log)

    def fence(self, reason: str) -> None:
        """Fence this replica now (it writes nothing more; the ``on_fenced`` callbacks run once)."""
        self.ownership.fence(reason)

    async def close(self) -> None:
        """Stop the writer and the mirrors, revoke the lease (deregistering the replica), close the client."""
        self._closing = self.writer.closing = self.ownership.closing = True
        await _stop([*self._tasks, *self.writer.inflight])
        self.writer.fail_pending(EtcdError("etcd store closed"))
        if self.lease is not None and not self.fenced.is_set():
            with contextlib.suppress(EtcdError):
                await self.client.revoke_lease(self.lease, timeout=2.0)
        await self.client.close()

    # ------------------------------------------------------------------ the protocol

    @property
    def commits_synchronously(self) -> bool:
        """False: every commit is a round trip to etcd."""
        return False

    def commit_now(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Not available: use :meth:`commit`."""
        raise RuntimeError("the etcd store commits asynchronously: await commit()")

    async def commit(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Queue ``batch`` for the writer and wait for its results (one per operation, in order)."""
        return await self.writer.commit(batch)

    def fence_of(self, worker: WorkerKey) -> int | None:
        """This replica's fence for ``worker`` (None: it does not own it)."""
        return self.ownership.fence_of(worker)

    def drop_worker(self, worker: WorkerKey) -> None:
        """Stop writing about ``worker`` (it moved away or left): later writes answer FENCE_LOST."""
        self.ownership.drop(worker)

    async def load_worker_sessions(self, worker: WorkerKey) -> WorkerSnapshot:
        """The worker key's mod revision and its open sessions, all read at one revision."""
        listed = await self.client.txn([], [get_op(self.keys.worker(worker)),
                                             get_op(self.keys.slots(worker), prefix_end(self.keys.slots(worker)),
                                                    keys_only=True)])
        revision = listed.header.revision
        worker_kvs = listed.responses[0].response_range.kvs
        fence = worker_kvs[0].mod_revision if worker_kvs else 0
        slot_prefix = len(self.keys.slots(worker))
        ids = [unquote(kv.key[slot_prefix:].decode()) for kv in listed.responses[1].response_range.kvs]
        reads = await asyncio.gather(*(self.client.range(self.keys.session(sid), revision=revision) for sid in ids))
        sessions = []
        for sid, reply in zip(ids, reads, strict=True):
            if reply.kvs:
                sessions.append(self._stored(sid, reply.kvs[0]))
        return WorkerSnapshot(worker, fence, tuple(sessions))

    async def read_session(self, session_id: str) -> StoredSession | None:
        """The session's record (a linearizable read), or None."""
        kv = await self.client.get(self.keys.session(session_id))
        return None if kv is None else self._stored(session_id, kv)

    async def watch_session(self, session_id: str, after_revision: int) -> AsyncIterator[StoredSession]:
        """Every version of the record after ``after_revision``; after a compaction, the newest one."""
        key = self.keys.session(session_id)
        last = after_revision
        while True:
            try:
                async with await self.client.watch(key, start_revision=last + 1) as watch:
                    async for batch in watch:
                        for event in batch.events:
                            if event.type != PUT:
                                return  # the retention bucket expired: nothing more will come
                            last = event.kv.mod_revision
                            yield self._stored(session_id, event.kv)
            except EtcdCompactedError:
                current = await self.client.get(key)
                if current is None:
                    return
                if current.mod_revision > last:
                    last = current.mod_revision
                    yield self._stored(session_id, current)

    def owner_of(self, worker: WorkerKey) -> str | None:
        """The replica owning ``worker`` per the mirror."""
        return self.ownership.owner_of(worker)

    def replica_address(self, replica_id: str) -> str | None:
        """A live replica's address per the mirror."""
        return self.ownership.replicas.get(replica_id)

    def worker_owners(self) -> list[tuple[WorkerKey, str]]:
        """Every worker known to the cluster and the replica owning it, per the mirror."""
        return [(worker, owner) for worker, (owner, _) in self.ownership.workers.items()]

    def replicas(self) -> dict[str, str]:
        """Every live replica (id -> address) per the mirror."""
        return dict(self.ownership.replicas)

    async def workers_changed(self) -> None:
        """Wait until the worker mirror changes."""
        await self.ownership.workers_changed()

    def _stored(self, session_id: str, kv: pb.KeyValue) -> StoredSession:
        entry = store_pb2.SessionEntry.FromString(kv.value)
        return StoredSession(session_id, (entry.task_queue, entry.worker_id), entry.record, kv.mod_revision)

    # ------------------------------------------------------------------ orphans and cluster-wide keys

    async def orphaned_workers(self, gone_for: float) -> list[tuple[str, WorkerKey]]:
        """Workers still recorded as owned by a replica that has been gone (no ``replicas/`` key,
        per the mirror) for at least ``gone_for`` seconds: (dead replica id, worker)."""
        return await self.orphans.orphaned_workers(gone_for)

    async def release_orphan(self, replica_id: str, worker: WorkerKey, seen_revision: int,
                             ends: Sequence[EndSession]) -> bool:
        """End a dead replica's sessions on ``worker`` and free it, in one fenced Txn (see
        :meth:`Orphans.release_orphan <sessiond.store.etcd.orphans.Orphans.release_orphan>`)."""
        return await self.orphans.release_orphan(replica_id, worker, seen_revision, ends)

    async def cluster_secret(self, name: str) -> bytes:
        """A random 32-byte secret shared by every replica of the cluster: the first replica to ask
        creates it (create-if-absent Txn), the others read it."""
        key = self.prefix_of(f"secrets/{name}")
        fresh = os.urandom(32)
        reply = await self.client.txn([created_at(key, 0)], [put_op(key, fresh)], [get_op(key)],
                                      timeout=TXN_TIMEOUT)
        if reply.succeeded:
            return fresh
        return bytes(reply.responses[0].response_range.kvs[0].value)

    def prefix_of(self, name: str) -> bytes:
        """A key prefix under this cluster's."""
        return self.keys.prefix + name.encode()


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. A task that swallowed its cancel (as
    ``asyncio.wait_for`` can on Python 3.11, when the awaited result arrives in the same loop step) is
    cancelled again instead of being waited for for ever (a store's close once hung that way)."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=STOP_PATIENCE)
        for task in pending:
            log.warning("etcd store: task %s did not stop when cancelled; cancelling it again", task.get_name())
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: its failure was reported (or does not matter) while closing



if TYPE_CHECKING:
    def _conforms(store: EtcdStore) -> SessionStore:
        return store  # mypy checks EtcdStore against the protocol
