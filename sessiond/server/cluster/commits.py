"""Reserve -> commit -> publish (SPEC §6.5, distributed.md §3): the core still decides synchronously
(it reserves the slot); :meth:`Commits.submit` makes the decisions of one engine step durable in the
store and only then publishes them (SessionStarted to the worker, the caller's answer, watchers,
metrics). Steps are published in the order they were taken. A placement the store refuses is aborted
in the core (its slot goes to the next waiter) and its caller gets the store's reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiond.core import events as ev
from sessiond.core.errors import ExistingOpenSessionError, OwnerUnavailableError
from sessiond.core.model import Session
from sessiond.server.cluster.keys import owner_key_name, request_key_name, worker_name
from sessiond.server.errors import PlacedElsewhereError
from sessiond.store.base import CommitResult, EndSession, Outcome, PlaceSession, ReleaseWorker, StoreOp
from sessiond.store.etcd.errors import EtcdError

if TYPE_CHECKING:
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Commits"]

log = logging.getLogger("sessiond.cluster")

END_WAIT = 5.0
"""Seconds CompleteSession waits for its end to become definite (an etcd election, a lost answer
read back) before answering OWNER_UNAVAILABLE; the client's retry waits for the same end again."""


_Key = tuple[str, object]
"""What an event is about, for ordering: ("s", session id), ("w", worker key) or ("q", waiter id)."""


def _keys(event: ev.Event) -> set[_Key]:
    if isinstance(event, ev.SessionPlaced):
        keys: set[_Key] = {("s", event.session.session_id), ("w", event.session.worker.key)}
        if event.waiter_id is not None:
            keys.add(("q", event.waiter_id))
        return keys
    if isinstance(event, ev.SessionEnded):
        return {("s", event.session.session_id), ("w", event.session.worker.key)}
    if isinstance(event, ev.ActivityEnded):
        return {("s", event.activity.session_id)}
    if isinstance(event, ev.SessionDetached):
        return {("s", event.session.session_id)}
    if isinstance(event, ev.WaiterFailed):
        return {("q", event.waiter_id)}
    if isinstance(event, ev.WorkerRegistered):
        return {("w", event.worker.key), *(("s", s.session_id) for s in event.reattached)}
    return {("w", event.key)}  # WorkerGone


def _commits(event: ev.Event) -> bool:
    return isinstance(event, ev.SessionPlaced | ev.SessionEnded | ev.WorkerGone)


class Commits:
    """The engine's steps, made durable in the store before they are published."""

    def __init__(self, engine: Engine, store: EtcdStore, fenced: asyncio.Event) -> None:
        self.engine = engine
        self.store = store
        self.fenced = fenced
        self._loop = asyncio.get_running_loop()
        # Steps in flight (committing, or waiting to publish after earlier steps they depend on), and
        # for each session / worker / waiter the last of them that concerns it.
        self._steps: set[asyncio.Task[None]] = set()
        self._tails: dict[_Key, asyncio.Task[None]] = {}
        self._placements: dict[str, asyncio.Future[None]] = {}
        self._ends: dict[str, asyncio.Future[Outcome]] = {}  # ends in flight: their commit outcome

    def submit(self, events: Sequence[ev.Event]) -> None:
        """Commit what one engine step decided, then publish its events in order.

        Only events that must be ordered with a commit wait for it (review i12b, 9): those about a
        session, worker or waiter that a commit in flight (or an earlier event of this step that
        waits) concerns. The others are published at once: an activity's result or a registration
        is not held up by an etcd election."""
        ops = self._ops(events)
        later: list[ev.Event] = []
        keys: set[_Key] = set()
        after: set[asyncio.Task[None]] = set()
        for event in events:
            mine = _keys(event)
            waits = {self._tails[k] for k in mine if k in self._tails}
            if waits or _commits(event) or not keys.isdisjoint(mine):
                later.append(event)
                keys |= mine
                after |= waits
            else:
                self.engine._publish(event)
        if not later:
            return
        task = self._loop.create_task(self._commit_then_publish(after, later, ops))
        self._steps.add(task)
        for key in keys:
            self._tails[key] = task
        task.add_done_callback(self._step_done)

    def _ops(self, events: Sequence[ev.Event]) -> list[StoreOp]:
        ops: list[StoreOp] = []
        for event in events:
            if isinstance(event, ev.SessionPlaced):
                session = event.session
                ops.append(PlaceSession(session.session_id, worker_name(session.worker.key), self._record(session),
                                        owner_key_name(session.principal, session.owner), self._request_name(session)))
                self._placements[session.session_id] = self._loop.create_future()
            elif isinstance(event, ev.SessionEnded):
                session = event.session
                ops.append(EndSession(session.session_id, worker_name(session.worker.key), self._record(session),
                                      owner_key_name(session.principal, session.owner), self._request_name(session)))
                self._ends[session.session_id] = self._loop.create_future()
            elif isinstance(event, ev.WorkerGone):
                # Nobody routes creates to a worker that is gone (review i12b, 5).
                ops.append(ReleaseWorker(worker_name(event.key)))
        return ops

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self._steps.discard(task)
        for key in [k for k, t in self._tails.items() if t is task]:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a committed step failed", exc_info=task.exception())

    async def placed(self, session_id: str) -> None:
        """Wait until the placement of ``session_id`` is durable (raises the store's refusal)."""
        future = self._placements.get(session_id)
        if future is not None:
            await asyncio.shield(future)

    async def settled(self) -> None:
        """Wait until every step submitted so far is committed and published."""
        if self._steps:
            await asyncio.wait(set(self._steps))

    async def ended(self, session_id: str, timeout: float = END_WAIT) -> Outcome:
        """Wait until every step submitted so far is published; return the commit outcome of the
        session's end among them (COMMITTED when none was in flight: the session was already
        terminal here, and that end's own caller heard its outcome; UNKNOWN when the replica fences
        itself first, or the store has not made the outcome definite within ``timeout`` seconds)."""
        future = self._ends.get(session_id)
        settled = asyncio.ensure_future(self.settled())
        fenced = asyncio.ensure_future(self.fenced.wait())
        try:
            # A replica that fences itself stops: its caller hears OWNER_UNAVAILABLE before that.
            await asyncio.wait({settled, fenced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
            fenced.cancel()
        if future is None:
            return Outcome.COMMITTED
        return future.result() if future.done() else Outcome.UNKNOWN

    def _end_outcome(self, session_id: str, outcome: Outcome) -> None:
        future = self._ends.pop(session_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _commit_then_publish(self, previous: set[asyncio.Task[None]], events: list[ev.Event],
                                   ops: list[StoreOp]) -> None:
        try:
            results = await self.store.commit(ops) if ops else []
        except EtcdError as error:
            log.warning("store commit failed: %s", error)
            results = [CommitResult(Outcome.UNKNOWN)] * len(ops)
        if previous:
            await asyncio.wait(previous)  # publish after the earlier steps about the same things
        outcome = iter(results)
        try:
            for event in events:
                if isinstance(event, ev.SessionPlaced):
                    await self._publish_placed(event, next(outcome))
                elif isinstance(event, ev.SessionEnded):
                    result = next(outcome)
                    sid = event.session.session_id
                    self._end_outcome(sid, result.outcome)
                    if sid not in self.engine.table._sessions:
                        continue  # its placement was refused: nothing to tell anyone
                    if result.outcome is not Outcome.COMMITTED:
                        # FENCE_LOST: another replica owns the worker, the session lives on there.
                        # UNKNOWN (the store made it definite unless this replica fenced itself or
                        # closed): the store's version stands, never published as ended. Forget it here.
                        self.engine.table.abort_placement(self.engine.now(), sid)
                        continue
                    self.engine._publish(event)
                elif isinstance(event, ev.WorkerGone):
                    released = next(outcome)
                    log.info("worker gone: its ownership keys %s", "deleted" if released.outcome is Outcome.COMMITTED
                             else f"kept ({released.outcome.value})", extra={"worker_id": event.key.worker_id})
                else:
                    self.engine._publish(event)
        finally:
            # A step that failed half-way leaves no CompleteSession waiting for ever: its ends are unknown.
            for event in events:
                if isinstance(event, ev.SessionEnded):
                    self._end_outcome(event.session.session_id, Outcome.UNKNOWN)
        self.engine._flush()  # what an abort freed may have placed a waiter

    async def _publish_placed(self, event: ev.SessionPlaced, result: CommitResult) -> None:
        session = event.session
        sid = session.session_id
        future = self._placements.pop(sid, None)
        # UNKNOWN only when the replica fenced itself or is closing (the store makes a lost answer
        # definite before answering): refused like FENCE_LOST, the worker moves and its new owner
        # fails what the worker never heard of.
        outcome = result.outcome
        if outcome is Outcome.COMMITTED:
            if sid in self.engine.table._sessions:
                self.engine._publish(event)
            if future is not None and not future.done():
                future.set_result(None)
            return
        error: Exception
        if outcome is Outcome.OWNER_TAKEN:
            error = ExistingOpenSessionError(session.owner, result.existing_session_id)
        elif outcome is Outcome.REQUEST_DONE and result.existing_session_id:
            error = PlacedElsewhereError(result.existing_session_id)
        else:
            error = OwnerUnavailableError(
                f"worker {session.worker.key.worker_id!r} is moving to another replica (or the store did not "
                "answer); retry", metadata={"worker_id": session.worker.key.worker_id})
        log.info("placement refused by the store", extra={"session_id": sid, "outcome": outcome.value})
        self.engine.table.abort_placement(self.engine.now(), sid)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # retrieved here: a caller that gave up must not leave it unobserved
        if event.waiter_id is not None:
            self.engine._waiter_refused(event.waiter_id, error)

    def _record(self, session: Session) -> bytes:
        return self.engine.to_pb(session).SerializeToString()

    @staticmethod
    def _request_name(session: Session) -> str | None:
        return request_key_name(session.task_queue, session.worker.key.worker_id, session.request_id,
                                session.recreated, session.principal)

