"""The etcd store against a real 3-member cluster: fenced claims, places and ends; owner and
request-id uniqueness across replicas; group commit; the mirrors; adoption reads; self-fencing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from sessiond.store.base import ClaimWorker, EndSession, Outcome, PlaceSession, StoredSession, StoreOp
from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.store import EtcdStore
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio

W1 = ("q", "w1")
W2 = ("q/with slash", "w2")

MakeStore = Callable[..., Awaitable[EtcdStore]]


@pytest_asyncio.fixture
async def make_store(etcd_cluster: EtcdCluster, prefix: bytes) -> AsyncIterator[MakeStore]:
    """Start replicas' stores of one cluster (all under the test's prefix); closed after the test."""
    stores: list[EtcdStore] = []

    async def make(address: str = "127.0.0.1:1", endpoints: list[str] | None = None, **kwargs: object) -> EtcdStore:
        client = await EtcdClient.connect(endpoints or etcd_cluster.endpoints)
        store = EtcdStore(client, prefix, address, **kwargs)  # type: ignore[arg-type]
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def claim(store: EtcdStore, worker: tuple[str, str], seen: int = 0) -> int:
    [result] = await store.commit([ClaimWorker(worker, b"worker-record", seen)])
    assert result.outcome is Outcome.COMMITTED, result
    return result.revision


async def test_a_session_is_placed_read_watched_and_ended(make_store: MakeStore) -> None:
    store = await make_store()
    fence = await claim(store, W2)
    assert store.fence_of(W2) == fence and store.owner_of(W2) == store.replica_id

    [placed] = await store.commit([PlaceSession("s1", W2, b"open", owner="o1", request_id="r1")])
    assert placed.outcome is Outcome.COMMITTED and placed.revision > fence
    stored = await store.read_session("s1")
    assert stored == StoredSession("s1", W2, b"open", placed.revision)
    snapshot = await store.load_worker_sessions(W2)
    assert snapshot.fence_revision == fence and [s.session_id for s in snapshot.sessions] == ["s1"]

    seen: list[StoredSession] = []

    async def follow() -> None:
        async for version in store.watch_session("s1", placed.revision):
            seen.append(version)
            if version.record == b"closed":
                return

    watcher = asyncio.create_task(follow())
    [ended] = await store.commit([EndSession("s1", W2, b"closed", owner="o1", request_id="r1")])
    assert ended.outcome is Outcome.COMMITTED
    await asyncio.wait_for(watcher, 5)
    assert [(s.record, s.revision) for s in seen] == [(b"closed", ended.revision)]

    # The slot and the owner are free again; the terminal record stays readable, on a retention lease.
    assert (await store.load_worker_sessions(W2)).sessions == ()
    [again] = await store.commit([PlaceSession("s2", W2, b"open", owner="o1")])
    assert again.outcome is Outcome.COMMITTED
    kv = await store.client.get(store.keys.session("s1"))
    assert kv is not None and kv.lease != 0
    assert (await store.client.lease_time_to_live(kv.lease)).ttl > 3000


async def test_a_takeover_fences_the_old_owner_out(make_store: MakeStore) -> None:
    a = await make_store("127.0.0.1:1001")
    b = await make_store("127.0.0.1:1002")
    lost: list[tuple[str, str]] = []
    a.on_worker_lost.append(lost.append)
    fence_a = await claim(a, W1)
    [placed] = await a.commit([PlaceSession("s1", W1, b"open")])
    assert placed.outcome is Outcome.COMMITTED

    # b read the worker key (as a worker re-registering at b would make it) and takes it over.
    snapshot = await b.load_worker_sessions(W1)
    assert snapshot.fence_revision == fence_a and [s.session_id for s in snapshot.sessions] == ["s1"]
    fence_b = await claim(b, W1, snapshot.fence_revision)
    await eventually(lambda: a.owner_of(W1) == b.replica_id and lost == [W1], message="a sees the takeover")

    # Nothing a writes about the worker lands any more, even if it had not noticed the takeover.
    a.ownership.fences[W1] = fence_a  # as if the mirror were late
    results = await a.commit([PlaceSession("s2", W1, b"open"), EndSession("s1", W1, b"failed")])
    assert [r.outcome for r in results] == [Outcome.FENCE_LOST, Outcome.FENCE_LOST]
    assert a.fence_of(W1) is None
    # ... while b places and ends on it; a claim from a stale read loses.
    [ended] = await b.commit([EndSession("s1", W1, b"closed")])
    assert ended.outcome is Outcome.COMMITTED
    [stale] = await a.commit([ClaimWorker(W1, b"worker-record", fence_a)])
    assert stale.outcome is Outcome.FENCE_LOST
    assert b.fence_of(W1) == fence_b
    assert (await b.read_session("s1")) is not None
    # Ending a session that was never placed durably writes nothing (no stray record, no owner freed).
    [never] = await b.commit([EndSession("never-placed", W1, b"closed")])
    assert never.outcome is Outcome.COMMITTED and (await b.read_session("never-placed")) is None
    rworkers = await b.client.get_prefix(b.keys.prefix + b"rworkers/", keys_only=True)
    assert [kv.key for kv in rworkers.kvs] == [b.keys.replica_worker(b.replica_id, W1)]


async def test_one_owner_and_one_request_id_across_replicas(make_store: MakeStore) -> None:
    stores = [await make_store(f"127.0.0.1:{2000 + i}") for i in range(3)]
    workers = [("q", f"w{i}") for i in range(3)]
    for store, worker in zip(stores, workers, strict=True):
        await claim(store, worker)

    results = await asyncio.gather(*(
        store.commit([PlaceSession(f"s{i}", worker, b"open", owner="the-owner")])
        for i, (store, worker) in enumerate(zip(stores, workers, strict=True))))
    outcomes = [r[0] for r in results]
    winners = [i for i, r in enumerate(outcomes) if r.outcome is Outcome.COMMITTED]
    assert len(winners) == 1
    assert all(r.outcome is Outcome.OWNER_TAKEN and r.existing_session_id == f"s{winners[0]}"
               for i, r in enumerate(outcomes) if i != winners[0])

    results = await asyncio.gather(*(
        store.commit([PlaceSession(f"t{i}", worker, b"open", request_id="req-1")])
        for i, (store, worker) in enumerate(zip(stores, workers, strict=True))))
    outcomes = [r[0] for r in results]
    winners = [i for i, r in enumerate(outcomes) if r.outcome is Outcome.COMMITTED]
    assert len(winners) == 1
    assert all(r.outcome is Outcome.REQUEST_DONE and r.existing_session_id == f"t{winners[0]}"
               for i, r in enumerate(outcomes) if i != winners[0])
    opened = await stores[0].client.get_prefix(stores[0].keys.prefix + b"wsess/", keys_only=True)
    assert len(opened.kvs) == 2  # one per uniqueness race, nothing else


async def test_concurrent_commits_are_grouped_and_a_refused_one_spoils_none_of_the_others(
        make_store: MakeStore) -> None:
    store = await make_store()
    await claim(store, W1)
    [first] = await store.commit([PlaceSession("held", W1, b"open", owner="taken")])
    assert first.outcome is Outcome.COMMITTED
    txns_before = store.txns
    batches = [[PlaceSession(f"s{i}", W1, b"open", owner=f"o{i}")] for i in range(60)]
    batches.append([PlaceSession("loser", W1, b"open", owner="taken")])
    results = await asyncio.gather(*(store.commit(batch) for batch in batches))
    assert [r[0].outcome for r in results[:-1]] == [Outcome.COMMITTED] * 60
    assert results[-1][0].outcome is Outcome.OWNER_TAKEN and results[-1][0].existing_session_id == "held"
    # Packed into a few Txns; only the one holding the refused op is retried op by op (not all 61).
    assert store.txns - txns_before < 45
    assert len((await store.load_worker_sessions(W1)).sessions) == 61

    # Ends and places of one worker keep their order, even of one session in one batch.
    ops: list[StoreOp] = [EndSession(f"s{i}", W1, b"closed", owner=f"o{i}") for i in range(60)]
    ops += [PlaceSession("again", W1, b"open", owner="o0"), EndSession("again", W1, b"closed", owner="o0")]
    txns_before = store.txns
    ended = await store.commit(ops)
    assert all(r.outcome is Outcome.COMMITTED for r in ended)
    assert store.txns - txns_before <= 6  # two full Txns of ends; the re-placement waits for them
    assert [s.session_id for s in (await store.load_worker_sessions(W1)).sessions] == ["held"]
    assert (await store.read_session("again")) == StoredSession("again", W1, b"closed", ended[-1].revision)


async def test_mirrors_follow_replicas_and_a_closed_replica_leaves(make_store: MakeStore) -> None:
    a = await make_store("10.0.0.1:7001")
    b = await make_store("10.0.0.2:7001")
    await eventually(lambda: a.replica_address(b.replica_id) == "10.0.0.2:7001", message="a sees b")
    assert b.replica_address(a.replica_id) == "10.0.0.1:7001"
    await claim(b, W2)
    await eventually(lambda: a.owner_of(W2) == b.replica_id, message="a's worker mirror")
    await b.close()
    await eventually(lambda: a.replica_address(b.replica_id) is None, message="b deregistered")


async def test_a_replica_whose_lease_is_gone_fences_itself(make_store: MakeStore) -> None:
    store = await make_store(lease_ttl=2)
    reasons: list[str] = []
    store.on_fenced.append(reasons.append)
    await claim(store, W1)
    assert store.lease is not None
    await store.client.revoke_lease(store.lease.id)
    await eventually(lambda: store.fenced.is_set(), timeout=5, message="fenced")
    assert reasons and store.fence_of(W1) is None
    [result] = await store.commit([PlaceSession("s1", W1, b"open")])
    assert result.outcome is Outcome.FENCE_LOST


async def test_a_replica_cut_off_from_etcd_fences_itself_before_its_lease_can_expire(
        etcd_cluster: EtcdCluster, make_store: MakeStore) -> None:
    proxies = [await TcpProxy(endpoint).start() for endpoint in etcd_cluster.endpoints]
    try:
        store = await make_store(endpoints=[p.address for p in proxies], lease_ttl=2)
        observer = await make_store("127.0.0.1:2")
        await claim(store, W1)
        assert store.lease is not None
        lease_id = store.lease.id
        loop = asyncio.get_running_loop()
        for proxy in proxies:
            proxy.blackhole()
        await eventually(lambda: store.fenced.is_set(), timeout=5, message="fenced")
        fenced_at = loop.time()
        # etcd still held the lease when the replica stopped acting as an owner.
        assert (await observer.client.lease_time_to_live(lease_id)).ttl >= 0
        await eventually(lambda: observer.replica_address(store.replica_id) is None, timeout=6,
                         message="the lease expired in etcd")
        assert loop.time() > fenced_at
    finally:
        for proxy in proxies:
            proxy.resume()
            await proxy.close()


async def test_pipelined_txns_never_let_a_placement_overtake_an_end_on_its_worker(make_store: MakeStore) -> None:
    store = await make_store()
    await claim(store, W1)
    assert (await store.commit([PlaceSession("s0", W1, b"open")]))[0].outcome is Outcome.COMMITTED
    # Watch the writer: which Txns are in flight (ending or placing on W1) when another is sent.
    real_txn = store.client.txn
    in_flight: list[str] = []
    overtaken: list[str] = []

    async def txn(compare: Any, success: Any = (), failure: Any = (), **kwargs: Any) -> Any:
        slot_puts = [o for o in success if o.HasField("request_put") and b"/wsess/" in o.request_put.key]
        slot_deletes = [o for o in success if o.HasField("request_delete_range")
                        and b"/wsess/" in o.request_delete_range.key]
        kind = "end" if slot_deletes else "place" if slot_puts else "other"
        if kind == "place" and "end" in in_flight:
            overtaken.append("a placement was sent while an end on its worker was in flight")
        in_flight.append(kind)
        try:
            return await real_txn(compare, success, failure, **kwargs)
        finally:
            in_flight.remove(kind)

    store.client.txn = txn  # type: ignore[method-assign]
    # A capacity-1 worker churning: each end, then (while it is in flight) the placement reusing its slot.
    for i in range(30):
        ending = asyncio.create_task(store.commit([EndSession(f"s{i}", W1, b"closed")]))
        await eventually(lambda ending=ending: "end" in in_flight or ending.done(), message="the end is sent")
        placing = store.commit([PlaceSession(f"s{i + 1}", W1, b"open")])
        done = await asyncio.gather(ending, placing)
        assert [r[0].outcome for r in done] == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert overtaken == []
    assert [s.session_id for s in (await store.load_worker_sessions(W1)).sessions] == ["s30"]


def _lost(session_id: str, worker: tuple[str, str]) -> EndSession:
    return EndSession(session_id, worker, b"failed WORKER_LOST")


async def test_the_janitor_never_releases_a_worker_another_replica_has_just_taken_over(
        make_store: MakeStore) -> None:
    """Review i12b, blocking 2: the janitor listed the dead replica's worker, then another replica
    took it over, then the janitor read the worker's sessions (at the new owner's fence) and
    released it: its Txn deleted the new owner's key and failed the adopted sessions."""
    dead = await make_store()
    fence = await claim(dead, W1)
    [placed] = await dead.commit([PlaceSession("s1", W1, b"open")])
    assert placed.outcome is Outcome.COMMITTED
    dead_id = dead.replica_id
    await dead.close()  # its lease is revoked: replicas/<dead> is gone, rworkers/<dead>/... stays

    janitor = await make_store()
    survivor = await make_store()
    taken = await claim(survivor, W1, fence)  # the worker came back, at the survivor
    snapshot = await janitor.load_worker_sessions(W1)  # the janitor's read, after the takeover
    assert snapshot.fence_revision == taken

    assert not await janitor.release_orphan(dead_id, W1, snapshot.fence_revision,
                                            [_lost(s.session_id, W1) for s in snapshot.sessions])
    assert survivor.fence_of(W1) == taken
    assert (await survivor.load_worker_sessions(W1)).fence_revision == taken  # its key is intact
    stored = await survivor.read_session("s1")
    assert stored is not None and stored.record == b"open"  # the adopted session lives on


async def test_the_janitor_releases_only_workers_of_a_replica_that_etcd_says_is_gone(
        make_store: MakeStore) -> None:
    """A janitor whose replica mirror lags (or whose mirror task died) may think a live replica is
    gone: its release must still fail while that replica's key exists; a dead one's succeeds."""
    live = await make_store()
    fence = await claim(live, W1)
    [placed] = await live.commit([PlaceSession("s1", W1, b"open")])
    assert placed.outcome is Outcome.COMMITTED
    janitor = await make_store()
    assert not await janitor.release_orphan(live.replica_id, W1, fence, [_lost("s1", W1)])
    assert live.fence_of(W1) == fence
    stored = await live.read_session("s1")
    assert stored is not None and stored.record == b"open"

    # The control: once that replica is gone, the same release goes through.
    live_id = live.replica_id
    await live.close()
    assert await janitor.release_orphan(live_id, W1, fence, [_lost("s1", W1)])
    stored = await janitor.read_session("s1")
    assert stored is not None and stored.record == b"failed WORKER_LOST"
    assert (await janitor.load_worker_sessions(W1)).sessions == ()


async def test_a_store_whose_mirror_task_dies_fences_itself(etcd_cluster: EtcdCluster, prefix: bytes,
                                                            make_store: MakeStore) -> None:
    """A mirror that stops following etcd (here: a bug raising in its event handler) would make live
    replicas look gone and route by stale owners: the store fences itself instead."""
    client = await EtcdClient.connect(etcd_cluster.endpoints)
    store = EtcdStore(client, prefix, "127.0.0.1:2")

    def broken(events: Any) -> None:
        raise RuntimeError("a bug in the replica mirror")

    store.ownership.on_replica_events = broken  # type: ignore[method-assign]
    await store.start()
    try:
        assert not store.fenced.is_set()
        await make_store()  # a replica joins: the mirror's handler raises
        await eventually(store.fenced.is_set, timeout=10, message="the store fenced itself")
    finally:
        await store.close()


async def test_an_end_whose_answer_is_lost_is_made_definite_before_it_is_answered(
        etcd_cluster: EtcdCluster, make_store: MakeStore) -> None:
    """Review i12b, blocking 1: a Txn that times out was answered UNKNOWN (and its end published
    as done while etcd kept the session OPEN). Now the store re-puts the worker key under its fence
    (so the lost Txn can never apply later), reads back, and sends it again: the caller hears a
    definite outcome, and the store holds what it says."""
    async with TcpProxy(etcd_cluster.endpoints[0]) as proxy:
        store = await make_store(endpoints=[proxy.address], lease_ttl=15)
        fence = await claim(store, W1)
        [placed] = await store.commit([PlaceSession("s1", W1, b"open", owner="o1")])
        assert placed.outcome is Outcome.COMMITTED
        proxy.blackhole()
        ending = asyncio.create_task(store.commit([EndSession("s1", W1, b"closed", owner="o1")]))
        await eventually(lambda: store.resolving == 1 or ending.done(), timeout=15,
                         message="the end's Txn timed out")
        assert not ending.done(), ending.result()  # no UNKNOWN answer while the outcome is not definite
        proxy.resume()
        [ended] = await asyncio.wait_for(ending, 30)
        assert ended.outcome is Outcome.COMMITTED
        stored = await store.read_session("s1")
        assert stored is not None and stored.record == b"closed"
        moved = store.fence_of(W1)
        assert moved is not None and moved > fence  # re-put under the fence: the worker is still ours
        assert (await store.load_worker_sessions(W1)).fence_revision == moved
        assert store.resolving == 0
        [again] = await store.commit([PlaceSession("s2", W1, b"open", owner="o1")])  # the owner is free
        assert again.outcome is Outcome.COMMITTED


@pytest.mark.parametrize("kind", ["end", "place"])
async def test_a_txn_applied_whose_answer_is_lost_is_answered_as_etcd_holds_it(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, prefix: bytes, make_store: MakeStore, kind: str) -> None:
    """Review i12b, tests: a Txn that times out and *was* applied. The proxy forwards the Txn to etcd
    but holds back every answer, so etcd applies it while the store's call times out. The store must
    not answer UNKNOWN (an end would then be published as done, or a placement settled by one racy
    read): it re-puts the worker key under its fence and reads back, and its answer is what etcd
    holds."""
    async with TcpProxy(etcd_cluster.endpoints[0]) as proxy:
        store = await make_store(endpoints=[proxy.address], lease_ttl=15)
        await claim(store, W1)
        if kind == "end":
            [placed] = await store.commit([PlaceSession("s1", W1, b"open", owner="o1")])
            assert placed.outcome is Outcome.COMMITTED
            op: StoreOp = EndSession("s1", W1, b"closed", owner="o1")
            expected = b"closed"
        else:
            op, expected = PlaceSession("s1", W1, b"open", owner="o1"), b"open"
        key = prefix + b"sessions/s1"
        proxy.hold_replies()
        writing = asyncio.create_task(store.commit([op]))

        async def applied() -> bool:
            kv = await etcd.get(key)
            return kv is not None and expected in kv.value
        await eventually(applied, timeout=10, message="etcd applied the Txn (its answer is held back)")
        await eventually(lambda: store.resolving == 1, timeout=15, message="the Txn's answer timed out")
        assert not writing.done(), writing.result()  # no answer while the outcome is not definite
        proxy.resume()
        [result] = await asyncio.wait_for(writing, 30)
        assert result.outcome is Outcome.COMMITTED  # as etcd holds it
        stored = await store.read_session("s1")
        assert stored is not None and stored.record == expected
        slots = [s.session_id for s in (await store.load_worker_sessions(W1)).sessions]
        assert slots == ([] if kind == "end" else ["s1"])
        assert store.resolving == 0 and store.fence_of(W1) is not None  # still the owner, not fenced
        assert not store.fenced.is_set()
