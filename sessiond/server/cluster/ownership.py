"""Ownership of workers across replicas (SPEC §6.5, distributed.md §3.3-3.5).

* A worker belongs to the replica holding its stream: on registration the replica claims the worker
  key (a fenced Txn), reads the sessions recorded on it at a revision after the claim, adopts those
  the worker still holds (same ids) and fails the others WORKER_LOST.
* When another replica takes a worker over, this one closes the worker's old stream and forgets what
  it ends (its ends are refused by the fence: the sessions live on elsewhere).
* The janitor fails the sessions of workers whose replica died and that did not come back within the
  failover window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from sessiond_client.api.v1 import session_pb2

from sessiond.core.errors import OwnerUnavailableError
from sessiond.core.model import WorkerKey, WorkerRegistration
from sessiond.server.cluster.keys import worker_lost_end, worker_name
from sessiond.store.base import ClaimWorker, Outcome, StoredSession, StoreOp
from sessiond.store.etcd.errors import EtcdError

if TYPE_CHECKING:
    from sessiond.core.model import SessionRecord
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Ownership"]

log = logging.getLogger("sessiond.cluster")

CLAIM_ATTEMPTS = 3


class Ownership:
    """Claims, adoption and the janitor of one replica."""

    def __init__(self, engine: Engine, store: EtcdStore, fenced: asyncio.Event,
                 settled: Callable[[], Awaitable[None]]) -> None:
        self.engine = engine
        self.store = store
        self.fenced = fenced
        self._settled = settled
        store.on_worker_lost.append(self._worker_lost)

    async def take_over(self, reg: WorkerRegistration, held: list[SessionRecord]) -> list[SessionRecord]:
        """Make this replica the worker's owner before its registration is handled; return the held
        sessions to adopt (those the store records as OPEN on it). Sessions the store has OPEN on the
        worker that it no longer holds are failed WORKER_LOST.

        Raises:
            OwnerUnavailableError: the store cannot be reached, or this replica is fenced.
        """
        key = WorkerKey(reg.task_queue, reg.worker_id)
        worker = worker_name(key)
        record = session_pb2.WorkerInfo(worker_id=reg.worker_id, task_queue=reg.task_queue, identity=reg.identity,
                                        host_name=reg.host_name)
        record.connect_time.FromNanoseconds(time.time_ns())
        # A release of this worker's keys (its previous stream here is gone) goes first: else it
        # could delete the keys after this registration found them still ours.
        await self._settled()
        try:
            for _ in range(CLAIM_ATTEMPTS):
                if self.fenced.is_set():
                    break
                snapshot = await self.store.load_worker_sessions(worker)
                if self.store.fence_of(worker) != snapshot.fence_revision or snapshot.fence_revision == 0:
                    [claimed] = await self.store.commit([ClaimWorker(worker, record.SerializeToString(),
                                                                     snapshot.fence_revision)])
                    if claimed.outcome is not Outcome.COMMITTED:
                        continue  # another replica claimed it in between: read again
                    snapshot = await self.store.load_worker_sessions(worker)  # at a revision after the claim
                return await self._reconcile(key, snapshot.sessions, held)
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
        raise OwnerUnavailableError("this replica could not take the worker over; retry another replica")

    def owns(self, reg: WorkerRegistration) -> bool:
        """Whether this replica still owns the worker (its fence was not lost since the claim)."""
        return self.store.fence_of(worker_name(WorkerKey(reg.task_queue, reg.worker_id))) is not None

    async def _reconcile(self, key: WorkerKey, stored: Sequence[StoredSession], held: list[SessionRecord]
                         ) -> list[SessionRecord]:
        recorded = {s.session_id: s for s in stored}
        known = self.engine.table._sessions
        adopt = [r for r in held if r.session_id in recorded and r.session_id not in known]
        kept = {r.session_id for r in held}
        lost: list[StoreOp] = [
            worker_lost_end(entry, "the worker no longer holds the session (its replica failed over)")
            for sid, entry in recorded.items() if sid not in kept and sid not in known]
        if lost:
            await self.store.commit(lost)
        if adopt:
            log.info("adopting sessions of worker %s from the store", key.worker_id,
                     extra={"worker_id": key.worker_id, "sessions": len(adopt)})
        return adopt

    async def janitor_loop(self) -> None:
        """Fail the sessions of workers whose replica died and that did not come back within the
        failover window (distributed.md §3.5). Every replica runs it; the fenced Txn lets one win."""
        window = self.engine.recovery_window
        period = max(0.5, min(5.0, window / 4))
        while True:
            await asyncio.sleep(period)
            if self.fenced.is_set():
                return
            try:
                for replica_id, worker in await self.store.orphaned_workers(window):
                    await self._release_orphan(replica_id, worker)
            except EtcdError as error:
                log.warning("janitor: %s", error)

    async def _release_orphan(self, replica_id: str, worker: tuple[str, str]) -> None:
        if self.store.owner_of(worker) not in (replica_id, None):
            return  # taken over meanwhile
        snapshot = await self.store.load_worker_sessions(worker)
        ends = [worker_lost_end(s, "its worker did not come back within the failover window after its replica died")
                for s in snapshot.sessions]
        if await self.store.release_orphan(replica_id, worker, snapshot.fence_revision, ends):
            log.warning("janitor: worker %s of dead replica %s did not come back; %d session(s) failed "
                        "WORKER_LOST", worker[1], replica_id, len(ends),
                        extra={"worker_id": worker[1], "task_queue": worker[0]})

    def _worker_lost(self, worker: tuple[str, str]) -> None:
        """Another replica took the worker over (or its key is gone): its sessions live on there.
        They leave this table silently (review i12b, 4), so later calls here are forwarded to the
        owner instead of being answered from a stale copy; the worker's stream here is closed."""
        key = WorkerKey(*worker)
        if key in self.engine._connections:
            log.warning("worker %s is owned by another replica now; closing its stream here", worker[1])
        self.engine.drop_worker(key, "another replica took it over")
