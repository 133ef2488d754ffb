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
:data:`MAX_IN_FLIGHT` Txns in flight on disjoint keys (a placement on a worker also waits for the
ends on it in flight): an idle replica pays one round trip, a busy one batches and pipelines. A packed Txn whose
compares fail is retried one operation at a time, in order (a definite "not applied" is safe to
retry; an unknown outcome never is: it is reported as :attr:`Outcome.UNKNOWN`).

**Self-fencing** (§3.5): etcd never expires a lease early, so the replica may act as an owner until
``send time of the last acknowledged renewal + TTL - margin``. Past that (or when etcd says the lease
is gone) the store drops every fence, refuses every further write (``FENCE_LOST``) and calls the
``on_fenced`` callbacks: the server closes its worker streams so the workers move to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from sessiond.store.base import (
    ClaimWorker,
    CommitResult,
    EndSession,
    Outcome,
    PlaceSession,
    ReleaseWorker,
    StoredSession,
    StoreOp,
    WorkerKey,
    WorkerSnapshot,
)
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdCompactedError, EtcdError, EtcdUnavailableError
from sessiond.store.etcd.lease import Lease
from sessiond.store.etcd.ops import compare, created_at, delete_op, get_op, modified_at, prefix_end, put_op
from sessiond.store.etcd.watch import PUT
from sessiond.store.records import store_pb2

if TYPE_CHECKING:
    from sessiond.store.base import SessionStore

__all__ = ["MAX_TXN_OPS", "EtcdStore", "Keys"]

log = logging.getLogger("sessiond.store.etcd")

MAX_TXN_OPS = 120
"""Operations (compares, puts, deletes) per Txn; etcd's default ``--max-txn-ops`` is 128."""
MAX_IN_FLIGHT = 4
"""Txns the writer keeps in flight at once (on disjoint keys)."""
BUCKET_SECONDS = 10.0
BUCKET_KEYS = 500
TXN_TIMEOUT = 2.0
"""Seconds a write may take before its outcome counts as unknown (and is read back). A proposal
sent while the etcd leader dies waits for the new one; reading back after an election (≈ 1–2 s)
is quicker than waiting for the client's 5 s default."""
RESOLVE_PAUSE = 0.2
"""Seconds between attempts to make a lost Txn's outcome definite while etcd does not answer."""
STOP_PATIENCE = 1.0
"""Seconds :meth:`EtcdStore.close` waits for a cancelled task before cancelling it again."""
SELF_FENCE_MARGIN = 1.0
"""Seconds before the lease could expire at which the replica stops acting as an owner."""


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


@dataclass
class _Pending:
    ops: Sequence[StoreOp]
    future: asyncio.Future[list[CommitResult]]
    results: list[CommitResult | None] = field(default_factory=list)


@dataclass
class _Txn:
    """One Txn being packed: the operations it carries and what it compares and writes."""

    items: list[tuple[_Pending, int]] = field(default_factory=list)
    compares: dict[bytes, pb.Compare] = field(default_factory=dict)
    success: list[pb.RequestOp] = field(default_factory=list)
    written: set[bytes] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.compares) + len(self.success)


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
        self.fenced = asyncio.Event()
        self.on_fenced: list[Callable[[str], None]] = []
        self.on_worker_lost: list[Callable[[WorkerKey], None]] = []
        self._fences: dict[WorkerKey, int] = {}
        self._entries: dict[WorkerKey, bytes] = {}  # the worker keys this replica wrote (for re-puts)
        self.test_unfenced = False
        """Test-only: True makes places and ends skip the fence (a replica that lost the worker
        writes anyway): the negative control of the hard-limit tests. Never set otherwise."""
        self._workers: dict[WorkerKey, tuple[str, int]] = {}  # mirror: worker -> (owner, mod revision)
        self._replicas: dict[str, str] = {}  # mirror: replica id -> address
        self._workers_changed = asyncio.Event()
        self._gone_since: dict[str, float] = {}  # replicas seen gone by the janitor, since when (loop time)
        self._pending: deque[_Pending] = deque()
        self._queue: deque[tuple[_Pending, int]] = deque()
        # Txns in flight: the keys each writes, and the workers it ends sessions on.
        self._inflight: dict[asyncio.Task[None], tuple[set[bytes], set[WorkerKey]]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._bucket: tuple[int, float, int] | None = None  # (lease id, granted at, keys on it)
        self.txns = 0
        self.ops = 0
        self.resolving = 0
        """Operations whose Txn answer was lost and that are being made definite now."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Grant this replica's lease, register it, fill the mirrors and start the writer."""
        self.lease = await self.client.grant_lease(self.lease_ttl)
        record = store_pb2.ReplicaRecord(replica_id=self.replica_id, address=self.address, start_time=time.time())
        await self.client.put(self.keys.replica(self.replica_id), record.SerializeToString(), lease=self.lease.id)
        workers_rev = await self._load_workers()
        replicas_rev = await self._load_replicas()
        self._tasks = [
            asyncio.create_task(self._writer(), name="etcd-store-writer"),
            asyncio.create_task(self._follow(self.keys.workers, workers_rev, self._on_worker_events,
                                             self._load_workers), name="etcd-store-workers"),
            asyncio.create_task(self._follow(self.keys.replicas, replicas_rev, self._on_replica_events,
                                             self._load_replicas), name="etcd-store-replicas"),
            asyncio.create_task(self._guard_lease(self.lease), name="etcd-store-lease"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_exited)

    def _task_exited(self, task: asyncio.Task[None]) -> None:
        """Supervise the background tasks: without its writer, its mirrors or its lease guard a
        replica would write nothing, route by stale owners, see live replicas as gone, or outlive
        its lease. Any exit other than :meth:`close`'s cancel (or the guard's own fencing) fences it."""
        if self._closing or self.fenced.is_set():
            return
        error = None if task.cancelled() else task.exception()
        log.error("etcd store: background task %s stopped unexpectedly", task.get_name(), exc_info=error)
        self._fence(f"background task {task.get_name()} stopped ({error!r})")

    async def close(self) -> None:
        """Stop the writer and the mirrors, revoke the lease (deregistering the replica), close the client."""
        self._closing = True
        await _stop([*self._tasks, *self._inflight])
        self._fail_pending(EtcdError("etcd store closed"))
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
        if not batch:
            return []
        pending = _Pending(batch, asyncio.get_running_loop().create_future(), [None] * len(batch))
        self._pending.append(pending)
        self._wake.set()
        return await pending.future

    def fence_of(self, worker: WorkerKey) -> int | None:
        """This replica's fence for ``worker`` (None: it does not own it)."""
        return self._fences.get(worker)

    def drop_worker(self, worker: WorkerKey) -> None:
        """Stop writing about ``worker`` (it moved away or left): later writes answer FENCE_LOST."""
        self._fences.pop(worker, None)
        self._entries.pop(worker, None)

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
        entry = self._workers.get(worker)
        return None if entry is None else entry[0]

    def replica_address(self, replica_id: str) -> str | None:
        """A live replica's address per the mirror."""
        return self._replicas.get(replica_id)

    def worker_owners(self) -> list[tuple[WorkerKey, str]]:
        """Every worker known to the cluster and the replica owning it, per the mirror."""
        return [(worker, owner) for worker, (owner, _) in self._workers.items()]

    def replicas(self) -> dict[str, str]:
        """Every live replica (id -> address) per the mirror."""
        return dict(self._replicas)

    def _stored(self, session_id: str, kv: pb.KeyValue) -> StoredSession:
        entry = store_pb2.SessionEntry.FromString(kv.value)
        return StoredSession(session_id, (entry.task_queue, entry.worker_id), entry.record, kv.mod_revision)

    # ------------------------------------------------------------------ the writer

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                pending = self._pending.popleft()
                self._queue.extend((pending, i) for i in range(len(pending.ops)))
            try:
                await self._dispatch()
            except Exception as error:  # a bug must not kill the writer silently
                log.exception("etcd store writer failed")
                while self._queue:
                    pending, _ = self._queue.popleft()
                    if not pending.future.done():
                        pending.future.set_exception(error)

    async def _dispatch(self) -> None:
        """Send Txns from the head of the queue, up to :data:`MAX_IN_FLIGHT` at once. A Txn never
        shares a key with one in flight, and a placement on a worker waits for the ends on it in
        flight (so the slot count of a worker never exceeds its capacity at any revision); a claim
        waits for everything in flight and goes alone."""
        ends = sum(isinstance(p.ops[i], EndSession) for p, i in self._queue)
        if ends:
            await self._refresh_bucket(ends)
        while self._queue and len(self._inflight) < MAX_IN_FLIGHT:
            pending, i = self._queue[0]
            op = pending.ops[i]
            if isinstance(op, ClaimWorker | ReleaseWorker):
                if self._inflight:
                    return  # woken again when they are done
                self._queue.popleft()
                pending.results[i] = await (self._claim(op) if isinstance(op, ClaimWorker) else self._release(op))
                self._settle(pending)
                continue
            txn = _Txn()
            while self._queue:
                pending, i = self._queue[0]
                op = pending.ops[i]
                if isinstance(op, ClaimWorker | ReleaseWorker) or self._blocked(op):
                    break
                if not self._pack(txn, pending, i, op):
                    if not txn.items:
                        self._queue.popleft()  # nothing to write (fence lost): already answered
                        continue
                    break
                self._queue.popleft()
            if not txn.items:
                return  # the head waits for a Txn in flight
            task = asyncio.create_task(self._send_guarded(txn), name="etcd-store-txn")
            self._inflight[task] = (set(txn.written),
                                    {pending.ops[i].worker for pending, i in txn.items
                                     if isinstance(pending.ops[i], EndSession)})
            task.add_done_callback(self._txn_done)

    def _blocked(self, op: PlaceSession | EndSession) -> bool:
        """Whether ``op`` must wait for a Txn in flight (a shared key, or a placement behind an end
        on the same worker)."""
        keys = self.keys
        touched = [keys.session(op.session_id), keys.slot(op.worker, op.session_id)]
        if op.owner:
            touched.append(keys.owner(op.owner))
        if op.request_id:
            touched.append(keys.request(op.request_id))
        for written, ends_on in self._inflight.values():
            if any(k in written for k in touched):
                return True
            if isinstance(op, PlaceSession) and op.worker in ends_on:
                return True
        return False

    def _txn_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()

    async def _send_guarded(self, txn: _Txn) -> None:
        try:
            await self._send(txn)
        except Exception as error:  # a bug: its callers get it, the writer goes on
            log.exception("etcd store: sending a Txn failed")
            for pending, _ in txn.items:
                if not pending.future.done():
                    pending.future.set_exception(error)

    def _pack(self, txn: _Txn, pending: _Pending, i: int, op: PlaceSession | EndSession) -> bool:
        """Add ``op`` to ``txn``; False when it does not fit (or it was answered without a write)."""
        fence = None if self.fenced.is_set() else self._fences.get(op.worker)
        if fence is None and self.test_unfenced:
            fence = 0
        if fence is None:
            if txn.items:
                return False  # answer it after the packed Txn, in order
            pending.results[i] = CommitResult(Outcome.FENCE_LOST)
            self._settle(pending)
            return False
        compares, success = self._ops(op, fence)
        keys = [_written(o) for o in success]
        new_compares = {c.key: c for c in compares if c.key not in txn.compares}
        if txn.items and (txn.size + len(new_compares) + len(success) > MAX_TXN_OPS
                          or any(k in txn.written for k in keys)
                          or any(c.key in txn.written for c in compares)
                          or any(k in txn.compares and k not in new_compares for k in keys)):
            return False
        txn.items.append((pending, i))
        txn.compares.update(new_compares)
        txn.success.extend(success)
        txn.written.update(keys)
        return True

    def _ops(self, op: PlaceSession | EndSession, fence: int) -> tuple[list[pb.Compare], list[pb.RequestOp]]:
        keys = self.keys
        compares = [] if self.test_unfenced else [modified_at(keys.worker(op.worker), fence)]
        entry = store_pb2.SessionEntry(task_queue=op.worker[0], worker_id=op.worker[1], record=op.record,
                                       writer_replica=self.replica_id).SerializeToString()
        sid = op.session_id.encode()
        if isinstance(op, PlaceSession):
            success = [put_op(keys.session(op.session_id), entry), put_op(keys.slot(op.worker, op.session_id), b"")]
            if op.owner:
                compares.append(created_at(keys.owner(op.owner), 0))
                success.append(put_op(keys.owner(op.owner), sid))
            if op.request_id:
                compares.append(created_at(keys.request(op.request_id), 0))
                success.append(put_op(keys.request(op.request_id), sid))
            return compares, success
        # Only a session whose placement is durable is ended: a placement refused after the core
        # reserved it (and the session ended locally meanwhile) leaves nothing to end.
        compares.append(compare(keys.session(op.session_id), "version", ">", 0))
        return compares, self._end_ops(op, self._bucket_lease())

    def _end_ops(self, op: EndSession, bucket: int) -> list[pb.RequestOp]:
        """The writes that end a session: its terminal record and request key on the retention
        bucket, its slot and owner key deleted."""
        keys = self.keys
        entry = store_pb2.SessionEntry(task_queue=op.worker[0], worker_id=op.worker[1], record=op.record,
                                       writer_replica=self.replica_id).SerializeToString()
        success = [put_op(keys.session(op.session_id), entry, lease=bucket),
                   delete_op(keys.slot(op.worker, op.session_id))]
        if op.owner:
            success.append(delete_op(keys.owner(op.owner)))
        if op.request_id:
            success.append(put_op(keys.request(op.request_id), op.session_id.encode(), lease=bucket))
        return success

    async def _send(self, txn: _Txn) -> None:
        failure: list[pb.RequestOp] = []
        if len(txn.items) == 1:  # read what the compares looked at, to say which one failed
            failure = [get_op(c.key) for c in txn.compares.values()]
        try:
            reply = await self.client.txn(list(txn.compares.values()), txn.success, failure, timeout=TXN_TIMEOUT)
        except EtcdUnavailableError:
            # Its answer was lost: it may still be applied later. Make each operation's outcome
            # definite before anyone hears of it (its Txn task stays in flight meanwhile, so a
            # placement on the same worker waits: the slot is not reused before then).
            self.resolving += len(txn.items)
            try:
                for pending, i in txn.items:
                    op = pending.ops[i]
                    assert isinstance(op, PlaceSession | EndSession)
                    await self._make_definite(pending, i, op)
            finally:
                self.resolving -= len(txn.items)
            return
        except EtcdError as error:
            for pending, _ in txn.items:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self.txns += 1
        if reply.succeeded:
            self.ops += len(txn.items)
            self._answer(txn.items, CommitResult(Outcome.COMMITTED, reply.header.revision))
            return
        for pending, i in txn.items:
            op = pending.ops[i]
            assert isinstance(op, PlaceSession | EndSession)
            if len(txn.items) == 1:
                result = self._explain(op, reply)
                used = txn.compares.get(self.keys.worker(op.worker))
                if result.outcome is Outcome.UNKNOWN and used is not None \
                        and used.mod_revision != self._fences.get(op.worker, used.mod_revision):
                    # It compared a fence this replica has since moved (a re-put that settled
                    # another Txn's lost answer): the worker is still ours, send it again.
                    single = _Txn()
                    if self._pack(single, pending, i, op):
                        await self._send(single)
                    continue
                pending.results[i] = result
                self._settle(pending)
                continue
            single = _Txn()
            if self._pack(single, pending, i, op):
                await self._send(single)

    async def _make_definite(self, pending: _Pending, i: int, op: PlaceSession | EndSession) -> None:
        """Settle one operation of a Txn whose answer was lost (review i12b, blocking 1).

        First the worker key is re-put under this replica's fence: that moves the fence, so the
        lost Txn (which compared the old one) can never be applied after this point. Then the
        session is read back: applied means COMMITTED; not applied means the operation is sent
        again under the new fence (and may time out again: then this repeats). While etcd does
        not answer this retries; a replica that cannot reach etcd fences itself within its lease
        TTL, and the operation is then answered UNKNOWN (nothing is published: the replica stops).
        """
        while True:
            if self.fenced.is_set() or self._closing:
                self._answer([(pending, i)], CommitResult(Outcome.UNKNOWN))
                return
            try:
                if not await self._refence(op.worker):
                    self._answer([(pending, i)], CommitResult(Outcome.FENCE_LOST))
                    return
                kv = await self.client.get(self.keys.session(op.session_id), timeout=TXN_TIMEOUT)
            except EtcdUnavailableError:
                await asyncio.sleep(RESOLVE_PAUSE)
                continue
            if isinstance(op, PlaceSession):
                applied = kv is not None
            else:  # an end never placed durably has nothing to end (as in _explain)
                applied = kv is None or store_pb2.SessionEntry.FromString(kv.value).record == op.record
            if applied:
                log.info("etcd store: a Txn whose answer was lost had been applied",
                         extra={"session_id": op.session_id})
                self._answer([(pending, i)], CommitResult(Outcome.COMMITTED, 0 if kv is None else kv.mod_revision))
                return
            log.info("etcd store: a Txn whose answer was lost was not applied; sending it again",
                     extra={"session_id": op.session_id})
            single = _Txn()
            if self._pack(single, pending, i, op):
                await self._send(single)
            return

    async def _refence(self, worker: WorkerKey) -> bool:
        """Re-put ``worker``'s key if it is still this replica's (a fenced Txn), moving the fence
        past every Txn sent before. False when another replica owns it (or nobody does).

        Raises:
            EtcdUnavailableError: etcd did not answer (the outcome of this re-put is unknown too;
                the next attempt's compare then fails and its read shows the key is still ours).
        """
        fence, entry = self._fences.get(worker), self._entries.get(worker)
        if fence is None or entry is None:
            return False
        key = self.keys.worker(worker)
        reply = await self.client.txn([modified_at(key, fence)], [put_op(key, entry)], [get_op(key)],
                                      timeout=TXN_TIMEOUT)
        if reply.succeeded:
            self._moved_fence(worker, reply.header.revision)
            return True
        kvs = reply.responses[0].response_range.kvs if reply.responses else []
        if kvs and store_pb2.WorkerEntry.FromString(kvs[0].value).owner_replica == self.replica_id:
            self._moved_fence(worker, kvs[0].mod_revision)  # an earlier re-put of ours was applied
            return True
        self._lose(worker)
        return False

    def _moved_fence(self, worker: WorkerKey, revision: int) -> None:
        if worker in self._fences:
            self._fences[worker] = max(self._fences[worker], revision)
            self._workers[worker] = (self.replica_id, self._fences[worker])

    def _explain(self, op: PlaceSession | EndSession, reply: pb.TxnResponse) -> CommitResult:
        """Why a one-operation Txn's compares failed, from the reads of its failure branch (in the
        order of the compares: worker, then owner, then request)."""
        found = {r.response_range.kvs[0].key: r.response_range.kvs[0]
                 for r in reply.responses if r.response_range.kvs}
        revision = reply.header.revision
        worker = found.get(self.keys.worker(op.worker))
        if worker is not None and op.worker in self._fences and \
                store_pb2.WorkerEntry.FromString(worker.value).owner_replica == self.replica_id:
            self._moved_fence(op.worker, worker.mod_revision)  # our own re-put: still ours
        if worker is None or worker.mod_revision != self._fences.get(op.worker):
            self._lose(op.worker)
            return CommitResult(Outcome.FENCE_LOST, revision)
        if isinstance(op, PlaceSession):
            if op.owner and (held := found.get(self.keys.owner(op.owner))) is not None:
                return CommitResult(Outcome.OWNER_TAKEN, revision, held.value.decode())
            if op.request_id and (done := found.get(self.keys.request(op.request_id))) is not None:
                return CommitResult(Outcome.REQUEST_DONE, revision, done.value.decode())
        if isinstance(op, EndSession) and self.keys.session(op.session_id) not in found:
            return CommitResult(Outcome.COMMITTED, revision)  # never placed durably: nothing to end
        return CommitResult(Outcome.UNKNOWN, revision)

    def _answer(self, items: list[tuple[_Pending, int]], result: CommitResult) -> None:
        for pending, i in items:
            pending.results[i] = result
            self._settle(pending)

    def _settle(self, pending: _Pending) -> None:
        if not pending.future.done() and all(r is not None for r in pending.results):
            pending.future.set_result([r for r in pending.results if r is not None])

    def _fail_pending(self, error: Exception) -> None:
        waiting = [*self._pending, *(pending for pending, _ in self._queue)]
        self._pending.clear()
        self._queue.clear()
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(error)

    def _bucket_lease(self) -> int:
        """The retention bucket the next terminal record goes on (0 = none: :meth:`_refresh_bucket`
        could not grant one, and the record then stays until an operator deletes it)."""
        if self._bucket is None:
            return 0
        lease_id, granted, count = self._bucket
        self._bucket = (lease_id, granted, count + 1)
        return lease_id

    async def _refresh_bucket(self, ends: int) -> None:
        """Grant a new retention bucket when the current one is old or full (every 10 s or 500 keys):
        etcd deletes a bucket's keys in one step when it expires, so there is no cleanup loop."""
        now = time.monotonic()
        if (self._bucket is not None and now - self._bucket[1] < BUCKET_SECONDS
                and self._bucket[2] + ends <= BUCKET_KEYS):
            return
        try:
            lease = await self.client.grant_lease(int(self.retention) + 10, keep_alive=False)
        except EtcdError as error:
            log.warning("etcd store: no retention bucket: %s", error)
            return
        self._bucket = (lease.id, now, 0)

    async def _claim(self, op: ClaimWorker) -> CommitResult:
        if self.fenced.is_set():
            return CommitResult(Outcome.FENCE_LOST)
        key = self.keys.worker(op.worker)
        entry = store_pb2.WorkerEntry(owner_replica=self.replica_id, record=op.record).SerializeToString()
        success = [put_op(key, entry), put_op(self.keys.replica_worker(self.replica_id, op.worker), b"")]
        if op.seen_revision:
            current = await self.client.get(key)
            if current is None or current.mod_revision != op.seen_revision:
                return CommitResult(Outcome.FENCE_LOST)
            previous = store_pb2.WorkerEntry.FromString(current.value).owner_replica
            if previous != self.replica_id:
                success.append(delete_op(self.keys.replica_worker(previous, op.worker)))
        try:
            reply = await self.client.txn([modified_at(key, op.seen_revision)], success, timeout=TXN_TIMEOUT)
        except EtcdUnavailableError:
            return CommitResult(Outcome.UNKNOWN)
        self.txns += 1
        if not reply.succeeded:
            return CommitResult(Outcome.FENCE_LOST)
        self.ops += 1
        revision = reply.header.revision
        self._fences[op.worker] = revision
        self._entries[op.worker] = entry
        self._workers[op.worker] = (self.replica_id, revision)
        return CommitResult(Outcome.COMMITTED, revision)

    async def _release(self, op: ReleaseWorker) -> CommitResult:
        """Delete the worker's ownership keys if they are still this replica's (one fenced Txn)."""
        fence = None if self.fenced.is_set() else self._fences.get(op.worker)
        if fence is None:
            return CommitResult(Outcome.FENCE_LOST)
        self.drop_worker(op.worker)  # first: the delete's own watch event must not read as a loss
        key = self.keys.worker(op.worker)
        try:
            reply = await self.client.txn([modified_at(key, fence)], [
                delete_op(key), delete_op(self.keys.replica_worker(self.replica_id, op.worker))], timeout=TXN_TIMEOUT)
        except EtcdUnavailableError:
            return CommitResult(Outcome.UNKNOWN)  # the keys may stay: creates may still be routed here
        self.txns += 1
        if not reply.succeeded:
            return CommitResult(Outcome.FENCE_LOST)  # another replica took it over meanwhile
        self.ops += 1
        if self._workers.get(op.worker, ("", 0))[0] == self.replica_id:
            self._workers.pop(op.worker, None)
        return CommitResult(Outcome.COMMITTED, reply.header.revision)

    # ------------------------------------------------------------------ mirrors and the lease

    async def _load_workers(self) -> int:
        reply = await self.client.get_prefix(self.keys.workers)
        self._workers = {}
        for kv in reply.kvs:
            self._workers[self.keys.parse_worker(kv.key)] = (
                store_pb2.WorkerEntry.FromString(kv.value).owner_replica, kv.mod_revision)
        for worker, fence in list(self._fences.items()):
            seen = self._workers.get(worker)
            if seen is not None and seen[0] == self.replica_id:
                self._moved_fence(worker, seen[1])  # still ours (re-put meanwhile)
            elif seen is None or seen[1] > fence:
                self._lose(worker)
        return reply.header.revision

    async def _load_replicas(self) -> int:
        reply = await self.client.get_prefix(self.keys.replicas)
        self._replicas = {}
        for kv in reply.kvs:
            record = store_pb2.ReplicaRecord.FromString(kv.value)
            self._replicas[record.replica_id] = record.address
        return reply.header.revision

    async def _follow(self, prefix: bytes, revision: int, apply: Callable[[Sequence[pb.Event]], None],
                      reload: Callable[[], Any]) -> None:
        while not self._closing:  # (a cancel the client turns into an EtcdError must not keep it alive)
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

    def _on_worker_events(self, events: Sequence[pb.Event]) -> None:
        changed, self._workers_changed = self._workers_changed, asyncio.Event()
        changed.set()
        for event in events:
            worker = self.keys.parse_worker(event.kv.key)
            owner = ""
            if event.type == PUT:
                owner = store_pb2.WorkerEntry.FromString(event.kv.value).owner_replica
                self._workers[worker] = (owner, event.kv.mod_revision)
            else:
                self._workers.pop(worker, None)
            fence = self._fences.get(worker)
            if fence is not None and event.kv.mod_revision > fence:
                if event.type == PUT and owner == self.replica_id:
                    self._moved_fence(worker, event.kv.mod_revision)  # our own re-put, seen first
                else:
                    self._lose(worker)

    def _on_replica_events(self, events: Sequence[pb.Event]) -> None:
        for event in events:
            if event.type == PUT:
                record = store_pb2.ReplicaRecord.FromString(event.kv.value)
                self._replicas[record.replica_id] = record.address
            else:
                rid = unquote(event.kv.key[len(self.keys.replicas):].decode())
                self._replicas.pop(rid, None)

    # ------------------------------------------------------------------ orphans (the janitor's reads and write)

    async def orphaned_workers(self, gone_for: float) -> list[tuple[str, WorkerKey]]:
        """Workers still recorded as owned by a replica that has been gone (no ``replicas/`` key,
        per the mirror) for at least ``gone_for`` seconds: (dead replica id, worker)."""
        now = asyncio.get_running_loop().time()
        prefix = self.prefix_of("rworkers/")
        reply = await self.client.get_prefix(prefix, keys_only=True)
        out = []
        for kv in reply.kvs:
            rid, _, rest = kv.key[len(prefix):].decode().partition("/")
            rid = unquote(rid)
            if rid in self._replicas:
                self._gone_since.pop(rid, None)
                continue
            since = self._gone_since.setdefault(rid, now)
            if now - since >= gone_for:
                queue, _, worker = rest.partition("/")
                out.append((rid, (unquote(queue), unquote(worker))))
        return out

    async def release_orphan(self, replica_id: str, worker: WorkerKey, seen_revision: int,
                             ends: Sequence[EndSession]) -> bool:
        """In one Txn, if nobody took ``worker`` over since ``seen_revision``, the dead replica
        still owns it and etcd (not a possibly lagging mirror) says that replica is gone: store the
        terminal records of its open sessions, free their slots and owner keys, and delete the
        worker's ownership keys. False otherwise (nothing written).

        The fence compare alone is not enough: a replica that took the worker over between the
        janitor's listing and its read of the sessions would be matched by it (review i12b, 2). A
        takeover deletes ``rworkers/<dead>/q/w``; a live replica has its ``replicas/`` key."""
        await self._refresh_bucket(len(ends))
        bucket = self._bucket_lease()
        owned_by_dead = self.keys.replica_worker(replica_id, worker)
        success: list[pb.RequestOp] = [delete_op(self.keys.worker(worker)), delete_op(owned_by_dead)]
        for op in ends:
            success += self._end_ops(op, bucket)
        compares = [modified_at(self.keys.worker(worker), seen_revision),
                    compare(owned_by_dead, "version", ">", 0),
                    compare(self.keys.replica(replica_id), "version", "==", 0)]
        try:
            reply = await self.client.txn(compares, success, timeout=TXN_TIMEOUT)
        except EtcdUnavailableError:
            return False
        return bool(reply.succeeded)

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

    def _lose(self, worker: WorkerKey) -> None:
        self._fences.pop(worker, None)
        self._entries.pop(worker, None)
        for callback in list(self.on_worker_lost):
            callback(worker)

    async def _guard_lease(self, lease: Lease) -> None:
        """Fence this replica before its lease can expire (or when etcd says it is gone)."""
        loop = asyncio.get_running_loop()
        lost = asyncio.ensure_future(lease.wait_lost())
        try:
            while True:
                remaining = lease.deadline - SELF_FENCE_MARGIN - loop.time()
                if remaining <= 0 and not await self._lease_confirmed(lease):
                    self._fence("lease renewals stopped: fencing before it can expire")
                    return
                remaining = max(lease.deadline - SELF_FENCE_MARGIN - loop.time(), 0.01)
                await asyncio.wait({lost}, timeout=remaining)
                if lost.done():
                    self._fence(lost.result())
                    return
        finally:
            lost.cancel()

    async def _lease_confirmed(self, lease: Lease) -> bool:
        """Ask etcd directly, within part of the margin, whether the lease still lives: after a
        stall of this process the keepalive answers may be unread, and fencing would be needless.
        etcd never expires a lease before the TTL it reports has run from its answer, so the send
        time plus that TTL is a safe new deadline."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            reply = await self.client.lease_time_to_live(lease.id, timeout=SELF_FENCE_MARGIN / 2)
        except EtcdError:
            return False
        if reply.ttl <= 0 or loop.time() - sent >= SELF_FENCE_MARGIN / 2:
            return False
        lease.deadline = max(lease.deadline, sent + reply.ttl)
        return lease.deadline - SELF_FENCE_MARGIN > loop.time()

    def _fence(self, reason: str) -> None:
        if self.fenced.is_set():
            return
        log.warning("etcd store: replica %s fenced itself: %s", self.replica_id, reason)
        self.fenced.set()
        self._fences.clear()
        for callback in list(self.on_fenced):
            callback(reason)


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


def _written(op: pb.RequestOp) -> bytes:
    if op.HasField("request_put"):
        return op.request_put.key
    return op.request_delete_range.key


if TYPE_CHECKING:
    def _conforms(store: EtcdStore) -> SessionStore:
        return store  # mypy checks EtcdStore against the protocol
