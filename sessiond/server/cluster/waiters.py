"""Creates served oldest-first across replicas (SPEC §6.5, distributed.md §3.4), and the free-slot
hints that route creates to a replica with room.

How a create is admitted on a replica:

1. **Nobody waits for its task queue** (per this replica's mirror of the store's waiting creates):
   place it at once — on this replica's workers when they have room, else on the replica whose
   published free slots are highest (a forwarded create that places there now or answers
   ``NO_CAPACITY``; then the next one).
2. **Otherwise, or when no replica had room, it waits**: it takes a *ticket*, a key written to
   etcd whose create revision is its place in the task queue's cluster-wide line. A waiting create
   tries to place (as in 1) only while fewer tickets are ahead of it than there are free slots of
   its queue in the whole cluster, and tries again whenever the mirror or this replica's workers
   change. It gives up at its creation timeout (``CREATION_TIMEOUT``), like a single process's.

**The bound on unfairness.** Tickets are ordered by etcd revision, so two waiting creates are served
in the order their tickets were written. A create C1 can be served after a create C2 that arrived
later only when (a) C2 arrived within one etcd write round trip of C1 (their tickets' order is
then the order etcd committed them), or (b) C2 arrived at a replica before C1's ticket reached that
replica's mirror (one watch delivery after the write: C2 saw no one waiting and placed at once on a
free slot). Both windows are a few milliseconds on a healthy cluster (a watch delivery is ≈ 1 ms on
one machine, distributed.md §2(d)); a create never waits behind one that arrived after it by more
than one write round trip plus one watch delay. Within one replica, creates that arrive one after
another are ordered exactly (their tickets are written in order). A create that asks for resources
or a selector no free worker matches holds its place: it does not skip ahead of older creates,
nor do younger ones skip it while fewer free slots than creates ahead exist.

Waiter caps (``--max-waiters``, ``--max-waiters-per-queue``) count the creates waiting *on this
replica* (and its recreates); each replica enforces its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sessiond.core.errors import (
    CreationTimeoutError,
    NoCapacityError,
    OwnerUnavailableError,
    RecoveringError,
    TooManyWaitersError,
)
from sessiond.core.resources import SESSIONS
from sessiond.store.etcd.errors import EtcdError
from sessiond.store.etcd.waiting import WaitingBoard
from sessiond.supervise import stop

if TYPE_CHECKING:
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Admission"]

log = logging.getLogger("sessiond.cluster")

R = TypeVar("R")
HINT_REFRESH = 1.0
"""Seconds between re-checks of this replica's free slots when nothing told it of a change."""
RECHECK = 1.0
"""Seconds a waiting create waits for a change before it looks again anyway."""
DEQUEUE_ATTEMPTS = 5


class Admission:
    """Where a create of this replica places, when it waits, and the free slots it publishes."""

    def __init__(self, engine: Engine, store: EtcdStore) -> None:
        self.engine = engine
        self.store = store
        self.board = WaitingBoard(store)
        self._waiting: dict[str, int] = {}  # task queue -> creates waiting on this replica
        # This replica's waiting creates: task queue -> ticket -> the event that wakes it for its turn.
        self._turns: dict[str, dict[str, asyncio.Event]] = {}
        self._dispatching = False
        self.board.listeners.append(self._changed)
        self._published: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        # Tickets being removed in the background: held here (the loop keeps only weak references
        # to tasks) and cancelled at close (the ticket then goes with this replica's lease).
        self._dequeues: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Mirror the store's waiting creates and free slots; publish this replica's."""
        await self.board.start()
        self._publisher = asyncio.create_task(self._publish_loop(), name="sessiond-free-slots")
        # Dead, it would leave this replica's last free slots published: creates routed here for
        # ever, or never, and waiting creates counting slots that are not there.
        self.store.supervise(self._publisher, lambda: self._closing)

    async def close(self) -> None:
        """Stop publishing and mirroring (the keys go with the replica's lease)."""
        self._closing = True
        await stop(self._publisher)
        for task in list(self._dequeues):
            await stop(task)
        await self.board.close()

    def local_changed(self) -> None:
        """The engine took a step (a slot may have freed or been taken): republish, and let this
        replica's waiting creates look again."""
        self._dirty.set()
        self._changed()

    # ------------------------------------------------------------------ free slots

    def local_free(self, task_queue: str) -> int:
        """Sessions of ``task_queue`` this replica's eligible workers take now (none while it drains)."""
        if self.engine.draining:
            return 0
        return sum(max(0, w.free[SESSIONS]) for w in self.engine.table.registry.workers.values()
                   if w.key.task_queue == task_queue and w.eligible and w.key in self.engine._connections)

    def _all_local_free(self) -> dict[str, int]:
        free: dict[str, int] = {}
        if self.engine.draining:  # a draining replica places nothing: no create is routed to it
            return free
        for worker in self.engine.table.registry.workers.values():
            if worker.eligible and worker.key in self.engine._connections:
                queue = worker.key.task_queue
                free[queue] = free.get(queue, 0) + max(0, worker.free[SESSIONS])
        return free

    def free_elsewhere(self, task_queue: str) -> list[tuple[int, str]]:
        """(free slots, address) of the other live replicas with room for ``task_queue``, most first."""
        out = []
        for rid, free in self.board.free(task_queue).items():
            address = self.store.replica_address(rid) if rid != self.store.replica_id else None
            if free > 0 and address is not None:
                out.append((free, address))
        return sorted(out, key=lambda pair: (-pair[0], pair[1]))

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), HINT_REFRESH)
            self._dirty.clear()
            current = self._all_local_free()
            try:
                for queue in sorted(set(current) | set(self._published)):
                    free = current.get(queue, 0)
                    if self._published.get(queue, 0) != free:
                        await self.board.publish_free(queue, free)
                        if free:
                            self._published[queue] = free
                        else:
                            self._published.pop(queue, None)
            except EtcdError as error:
                log.warning("could not publish free slots: %s", error)
                await asyncio.sleep(0.2)
                self._dirty.set()

    # ------------------------------------------------------------------ admission

    async def create(self, task_queue: str, wait: float, place_here: Callable[[], Awaitable[R]],
                     place_at: Callable[[str], Awaitable[R]]) -> R:
        """Place a create now or after the creates of its queue that waited before it.

        Args:
            task_queue: the create's task queue.
            wait: seconds it may wait (its creation timeout, capped by its deadline).
            place_here: place on this replica's workers now; raises NoCapacityError when they have no room.
            place_at: the same on the replica at an address (raises NoCapacityError likewise).

        Raises:
            NoCapacityError: ``wait`` is 0 and no replica had room.
            CreationTimeoutError: no replica had room for it, in its turn, within ``wait``.
            TooManyWaitersError: it would wait, and this replica's waiter cap is reached.
            RecoveringError: this replica drains before a restart, and no other had room now.
        """
        if not self.board.waiting(task_queue):
            placed = await self._attempt(task_queue, place_here, place_at)
            if placed is not None:
                return placed
        if self.engine.draining:  # it would take a place in line on a replica about to go
            raise self.engine.drain_refusal("a session is placed")
        if wait <= 0:
            raise NoCapacityError(f"no worker of task queue {task_queue!r} on any replica has a free slot now")
        self._check_caps(task_queue)
        deadline = self._loop.time() + wait
        ticket = uuid.uuid4().hex
        turn = asyncio.Event()
        self._waiting[task_queue] = self._waiting.get(task_queue, 0) + 1
        self.engine.metrics.waiters(task_queue, +1)
        try:
            try:
                mine = await self.board.enqueue(task_queue, ticket)
            except EtcdError as error:
                raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
            self._turns.setdefault(task_queue, {})[ticket] = turn
            self._changed()
            while True:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    raise CreationTimeoutError(
                        f"no worker of task queue {task_queue!r} on any replica had a free slot for this create "
                        "in its turn within creation_timeout", metadata={"task_queue": task_queue})
                # Woken when it is this create's turn (see _dispatch); also looks again now and
                # then, so an attempt that failed for a passing reason is retried.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.wait(), min(remaining, RECHECK))
                turn.clear()
                if self._my_turn(task_queue, mine):
                    placed = await self._attempt(task_queue, place_here, place_at)
                    if placed is not None:
                        return placed
        finally:
            turns = self._turns.get(task_queue, {})
            turns.pop(ticket, None)
            if not turns:
                self._turns.pop(task_queue, None)
            self._waiting[task_queue] -= 1
            if not self._waiting[task_queue]:
                del self._waiting[task_queue]
            self.engine.metrics.waiters(task_queue, -1)
            # Not awaited by the caller (it may be cancelled): the ticket goes in the background.
            dequeue = self._loop.create_task(self._dequeue(task_queue, ticket), name="sessiond-dequeue-ticket")
            self._dequeues.add(dequeue)
            dequeue.add_done_callback(self._dequeued)

    def _line(self, task_queue: str) -> list[tuple[int, str, str]]:
        """The task queue's waiting creates that hold a place in line, oldest first."""
        turns = self._turns.get(task_queue, {})
        me = self.store.replica_id
        return [(revision, rid, ticket) for revision, rid, ticket in self.board.tickets(task_queue)
                if (ticket in turns if rid == me else self.store.replica_address(rid) is not None)]

    def _room(self, task_queue: str) -> int:
        return self.local_free(task_queue) + sum(free for free, _ in self.free_elsewhere(task_queue))

    def _my_turn(self, task_queue: str, revision: int) -> bool:
        """Whether fewer creates hold an older place in line than the cluster has free slots."""
        ahead = sum(1 for rev, _, _ in self._line(task_queue) if rev < revision)
        return ahead < self._room(task_queue)

    def _changed(self) -> None:
        """The mirror or this replica's workers changed: look at the lines once, soon (changes
        that arrive together are looked at together)."""
        if not self._dispatching and self._turns:
            self._dispatching = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Wake this replica's waiting creates whose turn it is: per task queue, the line is read
        once and the first ``free slots`` creates in it are woken if they wait here."""
        self._dispatching = False
        me = self.store.replica_id
        for task_queue, turns in list(self._turns.items()):
            room = self._room(task_queue)
            if room <= 0:
                continue
            for _, rid, ticket in self._line(task_queue)[:room]:
                if rid == me:
                    turns[ticket].set()

    def _dequeued(self, task: asyncio.Task[None]) -> None:
        self._dequeues.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # a bug: say so, once
            log.error("removing a waiting create's ticket failed", exc_info=error)

    async def _dequeue(self, task_queue: str, ticket: str) -> None:
        """Remove a ticket from the store: a ticket left behind would hold a place in line (this
        replica ignores its own, but the others count it until it goes with this replica's lease)."""
        for attempt in range(DEQUEUE_ATTEMPTS):
            try:
                await self.board.dequeue(task_queue, ticket)
                return
            except EtcdError as error:
                log.warning("could not remove a waiting create's ticket (attempt %d): %s", attempt + 1, error)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _attempt(self, task_queue: str, place_here: Callable[[], Awaitable[R]],
                       place_at: Callable[[str], Awaitable[R]]) -> R | None:
        """Place on this replica if its workers have room, else on the other replicas with room,
        most free first. None: none had room."""
        if self.local_free(task_queue) > 0:
            with contextlib.suppress(NoCapacityError):
                return await place_here()
        for _, address in self.free_elsewhere(task_queue):
            with contextlib.suppress(NoCapacityError, OwnerUnavailableError, RecoveringError):
                return await place_at(address)
        return None

    def _check_caps(self, task_queue: str) -> None:
        config = self.engine.config
        here = sum(self._waiting.values()) + self.engine.table.waiting_count()
        if config.max_waiters is not None and here >= config.max_waiters:
            raise TooManyWaitersError(task_queue, config.max_waiters, "in all task queues")
        queue = self._waiting.get(task_queue, 0) + self.engine.table.waiting.count(task_queue)
        if config.max_waiters_per_queue is not None and queue >= config.max_waiters_per_queue:
            raise TooManyWaitersError(task_queue, config.max_waiters_per_queue, f"on task queue {task_queue!r}")
