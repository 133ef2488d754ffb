"""The etcd store's writer: group commit of fenced Txns, and making lost Txn outcomes definite.

:meth:`Writer.commit` queues the batch for the one writer task, which packs the operations of every
waiting caller into as few Txns as possible (compares deduplicated, no key written twice in one Txn,
at most :data:`MAX_TXN_OPS` operations) and keeps up to :data:`MAX_IN_FLIGHT` Txns in flight on
disjoint keys (a placement on a worker also waits for the ends on it in flight): an idle replica
pays one round trip, a busy one batches and pipelines. A packed Txn whose compares fail is retried
one operation at a time, in order (a definite "not applied" is safe to retry). A Txn whose answer
was lost is made definite before anyone hears of it: the worker key is re-put under the fence (so
the lost Txn can never apply later) and the session read back. Claims and releases of a worker go
alone, after everything in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sessiond.store.base import (
    ClaimWorker,
    CommitResult,
    EndSession,
    Outcome,
    PlaceSession,
    ReleaseWorker,
    StoreOp,
    WorkerKey,
)
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdError, EtcdUnavailableError
from sessiond.store.etcd.keys import Keys
from sessiond.store.etcd.ops import compare, created_at, delete_op, get_op, modified_at, put_op
from sessiond.store.etcd.ownership import Ownership
from sessiond.store.etcd.retention import RetentionBuckets
from sessiond.store.records import store_pb2

__all__ = ["MAX_IN_FLIGHT", "MAX_TXN_OPS", "TXN_TIMEOUT", "Writer", "end_ops"]

log = logging.getLogger("sessiond.store.etcd")

MAX_TXN_OPS = 120
"""Operations (compares, puts, deletes) per Txn; etcd's default ``--max-txn-ops`` is 128."""
MAX_IN_FLIGHT = 4
"""Txns the writer keeps in flight at once (on disjoint keys)."""
TXN_TIMEOUT = 2.0
"""Seconds a write may take before its outcome counts as unknown (and is read back). A proposal
sent while the etcd leader dies waits for the new one; reading back after an election (≈ 1–2 s)
is quicker than waiting for the client's 5 s default."""
RESOLVE_PAUSE = 0.2
"""Seconds between attempts to make a lost Txn's outcome definite while etcd does not answer."""


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



class Writer:
    """The one writer of a replica's store: queues batches, packs and sends their Txns.

    Args:
        client: the store's client.
        keys: the cluster's key layout.
        ownership: this replica's fences and mirrors (claims, releases and lost answers move them).
        buckets: the retention buckets terminal records go on.
    """

    def __init__(self, client: EtcdClient, keys: Keys, ownership: Ownership, buckets: RetentionBuckets) -> None:
        self.client = client
        self.keys = keys
        self.ownership = ownership
        self.buckets = buckets
        self.replica_id = ownership.replica_id
        self.test_unfenced = False
        """Test-only: True makes places and ends skip the fence (a replica that lost the worker
        writes anyway): the negative control of the hard-limit tests. Never set otherwise."""
        self._pending: deque[_Pending] = deque()
        self._queue: deque[tuple[_Pending, int]] = deque()
        # Txns in flight: the keys each writes, and the workers it ends sessions on.
        self.inflight: dict[asyncio.Task[None], tuple[set[bytes], set[WorkerKey]]] = {}
        self._wake = asyncio.Event()
        self.closing = False
        """Set when the store closes: a lost answer is then no longer made definite (UNKNOWN)."""
        self.txns = 0
        self.ops = 0
        self.resolving = 0
        """Operations whose Txn answer was lost and that are being made definite now."""

    async def commit(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Queue ``batch`` for the writer and wait for its results (one per operation, in order)."""
        if not batch:
            return []
        pending = _Pending(batch, asyncio.get_running_loop().create_future(), [None] * len(batch))
        self._pending.append(pending)
        self._wake.set()
        return await pending.future

    async def run(self) -> None:
        """The writer task: move queued batches to the queue and dispatch it, until cancelled."""
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
            await self.buckets.refresh(ends)
        while self._queue and len(self.inflight) < MAX_IN_FLIGHT:
            pending, i = self._queue[0]
            op = pending.ops[i]
            if isinstance(op, ClaimWorker | ReleaseWorker):
                if self.inflight:
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
            self.inflight[task] = (set(txn.written),
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
        for written, ends_on in self.inflight.values():
            if any(k in written for k in touched):
                return True
            if isinstance(op, PlaceSession) and op.worker in ends_on:
                return True
        return False

    def _txn_done(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)
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
        fence = None if self.ownership.fenced.is_set() else self.ownership.fences.get(op.worker)
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
        return compares, end_ops(keys, self.replica_id, op, self.buckets.lease())

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
                        and used.mod_revision != self.ownership.fences.get(op.worker, used.mod_revision):
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
            if self.ownership.fenced.is_set() or self.closing:
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
        fence, entry = self.ownership.fences.get(worker), self.ownership.entries.get(worker)
        if fence is None or entry is None:
            return False
        key = self.keys.worker(worker)
        reply = await self.client.txn([modified_at(key, fence)], [put_op(key, entry)], [get_op(key)],
                                      timeout=TXN_TIMEOUT)
        if reply.succeeded:
            self.ownership.moved_fence(worker, reply.header.revision)
            return True
        kvs = reply.responses[0].response_range.kvs if reply.responses else []
        if kvs and store_pb2.WorkerEntry.FromString(kvs[0].value).owner_replica == self.replica_id:
            self.ownership.moved_fence(worker, kvs[0].mod_revision)  # an earlier re-put of ours was applied
            return True
        self.ownership.lose(worker)
        return False

    def _explain(self, op: PlaceSession | EndSession, reply: pb.TxnResponse) -> CommitResult:
        """Why a one-operation Txn's compares failed, from the reads of its failure branch (in the
        order of the compares: worker, then owner, then request)."""
        found = {r.response_range.kvs[0].key: r.response_range.kvs[0]
                 for r in reply.responses if r.response_range.kvs}
        revision = reply.header.revision
        worker = found.get(self.keys.worker(op.worker))
        if worker is not None and op.worker in self.ownership.fences and \
                store_pb2.WorkerEntry.FromString(worker.value).owner_replica == self.replica_id:
            self.ownership.moved_fence(op.worker, worker.mod_revision)  # our own re-put: still ours
        if worker is None or worker.mod_revision != self.ownership.fences.get(op.worker):
            self.ownership.lose(op.worker)
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

    def fail_pending(self, error: Exception) -> None:
        """Fail every batch not yet sent with ``error`` (the store is closing)."""
        waiting = [*self._pending, *(pending for pending, _ in self._queue)]
        self._pending.clear()
        self._queue.clear()
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _claim(self, op: ClaimWorker) -> CommitResult:
        if self.ownership.fenced.is_set():
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
        self.ownership.fences[op.worker] = revision
        self.ownership.entries[op.worker] = entry
        self.ownership.workers[op.worker] = (self.replica_id, revision)
        return CommitResult(Outcome.COMMITTED, revision)

    async def _release(self, op: ReleaseWorker) -> CommitResult:
        """Delete the worker's ownership keys if they are still this replica's (one fenced Txn)."""
        fence = None if self.ownership.fenced.is_set() else self.ownership.fences.get(op.worker)
        if fence is None:
            return CommitResult(Outcome.FENCE_LOST)
        self.ownership.drop(op.worker)  # first: the delete's own watch event must not read as a loss
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
        if self.ownership.workers.get(op.worker, ("", 0))[0] == self.replica_id:
            self.ownership.workers.pop(op.worker, None)
        return CommitResult(Outcome.COMMITTED, reply.header.revision)


def end_ops(keys: Keys, replica_id: str, op: EndSession, bucket: int) -> list[pb.RequestOp]:
    """The writes that end a session: its terminal record and request key on the retention
    bucket, its slot and owner key deleted (``replica_id`` is the writer recorded in the entry)."""
    entry = store_pb2.SessionEntry(task_queue=op.worker[0], worker_id=op.worker[1], record=op.record,
                                   writer_replica=replica_id).SerializeToString()
    success = [put_op(keys.session(op.session_id), entry, lease=bucket),
               delete_op(keys.slot(op.worker, op.session_id))]
    if op.owner:
        success.append(delete_op(keys.owner(op.owner)))
    if op.request_id:
        success.append(put_op(keys.request(op.request_id), op.session_id.encode(), lease=bucket))
    return success


def _written(op: pb.RequestOp) -> bytes:
    if op.HasField("request_put"):
        return op.request_put.key
    return op.request_delete_range.key

