"""Replicas publish an engine step only once its commit is durable, but only the events that must be
ordered with a commit wait for it (review i12b, 9): an activity's end or a registration about
nothing in flight is published while a commit is held (an etcd election), events about a session
or worker with a commit in flight wait for it, and the order per session and worker is kept.

The store is a fake whose commits are held until the test lets them through; the table is the real
core, so the events are the ones the engine would submit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sessiond_client.api.v1 import session_pb2

from sessiond.core import events as ev
from sessiond.core.table import SessionTable
from sessiond.server.cluster.commits import Commits
from sessiond.store.base import CommitResult, Outcome, StoreOp
from tests.unit.support import connect, create_placed, new_table

pytestmark = pytest.mark.asyncio


class HeldStore:
    """Commits answer COMMITTED once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.batches: list[Sequence[StoreOp]] = []

    async def commit(self, ops: Sequence[StoreOp]) -> list[CommitResult]:
        self.batches.append(ops)
        await self.release.wait()
        return [CommitResult(Outcome.COMMITTED, len(self.batches))] * len(ops)


class RecordingEngine:
    """What Commits uses of the engine: it records what is published."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        self.published: list[ev.Event] = []

    def _publish(self, event: ev.Event) -> None:
        self.published.append(event)

    def _flush(self) -> None:
        pass

    def now(self) -> float:
        return 0.0

    def to_pb(self, session: Any) -> session_pb2.Session:
        return session_pb2.Session(session_id=session.session_id)


async def test_only_events_about_a_commit_in_flight_wait_for_it() -> None:
    table = new_table()
    engine = RecordingEngine(table)
    store = HeldStore()
    commits = Commits(engine, store, asyncio.Event())  # type: ignore[arg-type]

    connect(table, "w1", 2)
    connect(table, "w2", 1)
    steady = create_placed(table, 1.0)  # placed (on w1 or w2) and committed
    commits.submit(table.take_events())
    await commits.settled()
    engine.published.clear()

    store.release.clear()  # etcd stops answering: the next commit is held
    held = create_placed(table, 2.0)
    commits.submit(table.take_events())
    await asyncio.sleep(0)
    assert engine.published == [] and len(store.batches) == 2  # the placement waits for its commit

    # An activity of another session times out, and a worker registers: published at once.
    steady_activity = table.start_activity(3.0, steady.session_id, 1.0)
    held_activity = table.start_activity(3.0, held.session_id, 1.0)
    table.advance(5.0)
    newcomer = connect(table, "w3", 1, now=5.0)
    commits.submit(table.take_events())
    published = engine.published
    assert [type(e) for e in published] == [ev.ActivityEnded, ev.WorkerRegistered]
    assert isinstance(published[0], ev.ActivityEnded) and published[0].activity is steady_activity
    assert isinstance(published[1], ev.WorkerRegistered) and published[1].worker is newcomer

    # The held session's own activity end waits behind its placement, in order.
    store.release.set()
    await commits.settled()
    rest = published[2:]
    assert [type(e) for e in rest] == [ev.SessionPlaced, ev.ActivityEnded]
    assert isinstance(rest[0], ev.SessionPlaced) and rest[0].session is held
    assert isinstance(rest[1], ev.ActivityEnded) and rest[1].activity is held_activity
