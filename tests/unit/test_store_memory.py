"""The in-memory store: every commit succeeds at once, and there is nothing to read back."""

from __future__ import annotations

import asyncio

from sessiond.store.base import CommitResult, EndSession, Outcome, PlaceSession, SessionStore
from sessiond.store.memory import MemoryStore

WORKER = ("q", "w1")
BATCH = [PlaceSession("s1", WORKER, b"open", owner="o", request_id="r"), EndSession("s1", WORKER, b"closed")]


def test_memory_commits_synchronously_and_every_operation_succeeds() -> None:
    store = MemoryStore()
    assert isinstance(store, SessionStore)
    assert store.commits_synchronously
    assert store.commit_now(BATCH) == [CommitResult(Outcome.COMMITTED)] * 2
    assert store.commit_now([]) == []


def test_memory_has_nothing_to_read_and_no_other_replica() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.start()
        assert await store.commit(BATCH) == store.commit_now(BATCH)
        assert await store.read_session("s1") is None
        snapshot = await store.load_worker_sessions(WORKER)
        assert snapshot.worker == WORKER and snapshot.sessions == ()
        assert [s async for s in store.watch_session("s1", 0)] == []
        assert store.owner_of(WORKER) is None and store.replica_address("r1") is None
        await store.close()

    asyncio.run(scenario())
