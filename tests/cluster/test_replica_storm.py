"""The per-worker hard limit across replicas while ownership changes (issue 12 tests; review i12b,
"Tests"): 3 replicas, 6 workers with max = 1 spread over them, 200 concurrent creates through every
replica with a churn of completes, and mid-storm one replica frozen past its lease (its workers are
taken over while it lives; it resumes with writes in flight and fences itself) and another killed
with kill -9 (its workers re-register at the last one). Never two OPEN sessions on one worker,
checked from etcd's history of the slot index and from each worker's own log of the sessions it
held (intervals on its monotonic clock).

The negative control shows the check can fail: with the store's fence disabled (a test-only
hook), a replica that lost a worker still writes a placement, and the same history check reports
two slots on one worker; with the fence on, the same sequence passes it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from sessiond.store.base import ClaimWorker, Outcome, PlaceSession
from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.ops import prefix_end
from sessiond.store.etcd.store import EtcdStore
from sessiond.store.etcd.watch import PUT
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import LEASE_TTL, Replicas, replicas, retried
from tests.cluster.test_replicas import QUEUE, Caller, start_owned, wait_owned
from tests.integration.conftest import error_info
from tests.integration.workers.support import worker_pool

pytestmark = pytest.mark.asyncio

CREATES = 200
STORM_DEADLINE = 50.0  # seconds for the whole churn (its own wall time is ~15-25 s here)
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


async def slot_history(etcd: EtcdClient, prefix: bytes, start_revision: int) -> tuple[set[str], int]:
    """Replay etcd's history of the slot index (``<prefix>wsess/<q>/<w>/<sid>``) from
    ``start_revision`` to now. Returns the session ids ever placed and the most slots any worker
    held at one revision; raises AssertionError at the first revision where a worker held two."""
    slots_prefix = prefix + b"wsess/"
    # A marker written now ends the replay (the last slot event may be older than the last revision).
    marker = slots_prefix + b"~end-of-history"
    await etcd.put(marker, b"")
    held: dict[str, set[str]] = {}
    placed: set[str] = set()
    peak = 0
    try:
        async with await etcd.watch(slots_prefix, prefix_end(slots_prefix), start_revision=start_revision) as watch:
            async for batch in watch:
                for event in batch.events:
                    if event.kv.key == marker:
                        return placed, peak
                    worker, _, sid = event.kv.key[len(slots_prefix):].decode().rpartition("/")
                    slots = held.setdefault(worker, set())
                    if event.type == PUT:
                        slots.add(sid)
                        placed.add(sid)
                    else:
                        slots.discard(sid)
                    peak = max(peak, len(slots))
                    assert len(slots) <= 1, f"worker {worker} held {sorted(slots)} at revision {batch.revision}"
    finally:
        await etcd.delete(marker)
    return placed, peak


def held_intervals(lines: Iterable[str]) -> tuple[set[str], int]:
    """Read a worker's own session log (``{"t": monotonic, "held"|"dropped": sid}`` per line, in the
    order it happened). Returns the sessions it held and the most it held at once; raises
    AssertionError at the first moment it held two."""
    holding: set[str] = set()
    seen: set[str] = set()
    peak = 0
    for line in lines:
        entry = json.loads(line)
        if "held" in entry:
            holding.add(entry["held"])
            seen.add(entry["held"])
        else:
            holding.discard(entry["dropped"])
        peak = max(peak, len(holding))
        assert len(holding) <= 1, f"the worker held {sorted(holding)} at once (t={entry['t']:.6f})"
    return seen, peak


def _whole_lines(log: Path) -> list[str]:
    """The lines a worker process has written whole to its session log so far."""
    text = log.read_text()
    return text[:text.rfind("\n") + 1].splitlines()


async def _churn(callers: list[Caller], k: int, deadline: float, done: list[str]) -> str:
    """Create (request id ``storm-k``) and complete one session, moving to the next replica when one
    does not answer: a retried create with the same request id returns the same session."""
    loop = asyncio.get_running_loop()
    turn = k % len(callers)
    sid = ""
    while not sid:
        caller = callers[turn % len(callers)]
        try:
            sid = (await caller.create(request_id=f"storm-{k}",
                                       creation=max(1.0, min(20.0, deadline - loop.time())))).session_id
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED or loop.time() > deadline:
                raise
            turn += 1
            await asyncio.sleep(0.05)  # back-off between attempts, not synchronisation
    while True:
        caller = callers[turn % len(callers)]
        try:
            await caller.complete(sid)
            done.append(sid)
            return sid
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            if error.code() not in RETRIED and (info is None or info.reason != "OWNER_UNAVAILABLE"):
                raise
            if loop.time() > deadline:
                raise
            turn += 1
            await asyncio.sleep(0.05)


async def test_the_hard_limit_holds_while_workers_change_owner_mid_storm(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, tmp_path: Path) -> None:
    async with replicas(etcd_cluster) as group, worker_pool() as start:
        start_revision = (await etcd.status()).header.revision + 1
        targets = group.targets
        workers = []
        for i in range(6):
            first = i // 2  # two workers per replica, each moving on to the next replicas in turn
            order = ",".join(targets[(first + n) % 3] for n in range(3))
            workers.append(await start_owned(start, group, etcd, targets[first], order, QUEUE, max_sessions=1,
                                             worker_id=f"s{i}", extra=("--session-log", str(tmp_path / f"s{i}.log"))))
        callers = [Caller(t) for t in targets]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORM_DEADLINE
        done: list[str] = []
        try:
            storm = asyncio.gather(*(_churn(callers, k, deadline, done) for k in range(CREATES)))
            faults = asyncio.create_task(_takeovers(group, etcd, done))
            ids = await storm
            took = await faults
        finally:
            for caller in callers:
                await caller.close()
        print(f"\nstorm: {CREATES} creates+completes; takeovers: {took}")
        assert len(set(ids)) == CREATES

        placed, peak = await slot_history(etcd, group.keys.prefix, start_revision)
        assert placed == set(ids) and peak == 1
        assert await group.open_sessions(etcd) == {}
        # The workers' own view: each held at most one session at any moment, no session was on two
        # workers, and they held every session the callers were given except those whose start
        # never reached the worker (placed as its replica went silent): the new owner failed those
        # WORKER_LOST, and that is what their callers were told.
        # A caller hears its create before the worker reads session_started off its stream, so a
        # worker's log can lag the storm's last sessions: read the logs until they account for
        # every session (held, or stored WORKER_LOST), with a deadline.
        async def accounted() -> tuple[set[str], set[str]] | None:
            held: set[str] = set()
            for i in range(6):
                seen, _ = held_intervals(_whole_lines(tmp_path / f"s{i}.log"))
                assert not seen & held, f"s{i} held a session another worker held"
                held |= seen
            assert held <= set(ids)
            never_started = set(ids) - held
            for sid in never_started:
                stored = await group.stored(etcd, sid)
                if stored is None or stored.failure.cause != session_pb2.FAILURE_CAUSE_WORKER_LOST:
                    return None
            return held, never_started

        held, never_started = await eventually(
            accounted, timeout=10, interval=0.1,
            message="every session held by a worker (its log) or stored failed WORKER_LOST")
        print(f"sessions the workers held: {len(held)}; failed WORKER_LOST before reaching one: "
              f"{len(never_started)}")


async def _takeovers(group: Replicas, etcd: EtcdClient, done: list[str]) -> dict[str, float]:
    """Mid-storm: freeze replica 0 past its lease, resume it (it fences itself, its workers are
    taken over), then kill -9 replica 1 (its workers re-register at replica 2). Returns how long each
    took until every worker was owned by a live replica again."""
    took = {}
    await eventually(lambda: len(done) >= CREATES // 4, timeout=40, message="a quarter of the storm done")
    frozen = group.servers[0]
    started = time.monotonic()
    frozen.signal(signal.SIGSTOP)
    await eventually(lambda: _replica_gone(group, etcd, frozen.target), timeout=LEASE_TTL + 10, interval=0.2,
                     message="the frozen replica's lease expired")
    frozen.signal(signal.SIGCONT)
    assert frozen.process is not None
    await asyncio.wait_for(frozen.process.wait(), 15)  # it fenced itself and stopped
    live = [s.target for s in group.servers[1:]]
    await eventually(lambda: _all_owned_by(group, etcd, live), timeout=20, message="workers taken over")
    took["sigstop"] = time.monotonic() - started

    await eventually(lambda: len(done) >= CREATES // 2, timeout=40, message="half of the storm done")
    started = time.monotonic()
    group.servers[1].signal(signal.SIGKILL)
    await eventually(lambda: _all_owned_by(group, etcd, [group.servers[2].target]), timeout=20,
                     message="workers re-registered at the last replica")
    took["kill-9"] = time.monotonic() - started
    return took


async def _replica_gone(group: Replicas, etcd: EtcdClient, address: str) -> bool:
    from sessiond.store.records import store_pb2

    reply = await etcd.get_prefix(group.keys.replicas)
    return all(store_pb2.ReplicaRecord.FromString(kv.value).address != address for kv in reply.kvs)


async def _all_owned_by(group: Replicas, etcd: EtcdClient, addresses: list[str]) -> bool:
    owners = [await group.owner(etcd, QUEUE, f"s{i}") for i in range(6)]
    return all(owner in addresses for owner in owners)


@pytest.mark.parametrize("fenced", [True, False], ids=["fence-on", "fence-off-negative-control"])
async def test_the_history_check_catches_a_write_by_a_replica_that_lost_the_worker(
        etcd_cluster: EtcdCluster, prefix: bytes, fenced: bool) -> None:
    stores: list[EtcdStore] = []
    try:
        for address in ("127.0.0.1:1001", "127.0.0.1:1002"):
            client = await EtcdClient.connect(etcd_cluster.endpoints)
            store = EtcdStore(client, prefix, address)
            await store.start()
            stores.append(store)
        a, b = stores
        start_revision = (await a.client.status()).header.revision + 1
        worker = ("q", "w1")
        [claimed] = await a.commit([ClaimWorker(worker, b"worker-record", 0)])
        assert claimed.outcome is Outcome.COMMITTED
        [first] = await a.commit([PlaceSession("s1", worker, b"open")])
        assert first.outcome is Outcome.COMMITTED
        # The worker re-registers at b, which takes it over (and would adopt s1 there) ...
        snapshot = await b.load_worker_sessions(worker)
        [taken] = await b.commit([ClaimWorker(worker, b"worker-record", snapshot.fence_revision)])
        assert taken.outcome is Outcome.COMMITTED
        await eventually(lambda: a.owner_of(worker) == b.replica_id, message="a saw the takeover")
        # ... while a, which lost it, still places a session it had reserved.
        a.ownership.fences[worker] = claimed.revision  # as if its mirror were late
        a.test_unfenced = not fenced
        [late] = await a.commit([PlaceSession("s2", worker, b"open")])
        if fenced:
            assert late.outcome is Outcome.FENCE_LOST
            placed, peak = await slot_history(a.client, prefix, start_revision)
            assert (placed, peak) == ({"s1"}, 1)
        else:
            assert late.outcome is Outcome.COMMITTED
            with pytest.raises(AssertionError, match=r"held \['s1', 's2'\]"):
                await slot_history(a.client, prefix, start_revision)
    finally:
        for store in stores:
            await store.close()


async def test_the_worker_log_check_catches_two_sessions_held_at_once() -> None:
    ok = ['{"t": 1.0, "held": "a"}', '{"t": 2.0, "dropped": "a"}', '{"t": 2.5, "held": "b"}']
    assert held_intervals(ok) == ({"a", "b"}, 1)
    overlapping = ['{"t": 1.0, "held": "a"}', '{"t": 2.0, "held": "b"}', '{"t": 3.0, "dropped": "a"}']
    with pytest.raises(AssertionError, match=r"held \['a', 'b'\] at once"):
        held_intervals(overlapping)


async def test_quorum_loss_fails_calls_clearly_and_the_service_recovers_when_a_member_returns(
        make_cluster: Callable[..., EtcdCluster]) -> None:
    """The failure matrix's "etcd loses quorum" row: 2 of 3 members killed. A create fails within
    its own deadline (no hang); the replica fences itself before its lease could expire and exits;
    the worker holds its session. One member back (quorum again) and the replica started again:
    the worker is adopted, its session OPEN with the same id."""
    etcd_cluster = make_cluster(3)
    group = Replicas(etcd_cluster, 1, failover_window=60)
    await group.start()
    replica = group.servers[0]
    try:
        async with await EtcdClient.connect(etcd_cluster.endpoints) as etcd, worker_pool() as start:
            worker = await start(replica.target, QUEUE, max_sessions=2, worker_id="quorum")
            await wait_owned(group, etcd, worker, replica.target)
            caller = Caller(replica.target)
            try:
                sid = (await caller.create()).session_id
                before = await _owner_id(group, etcd, "quorum")
                leader = await etcd_cluster.leader()
                follower = next(m for m in etcd_cluster.members if m is not leader)
                lost_at = time.monotonic()
                etcd_cluster.kill(leader)
                etcd_cluster.kill(follower)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await caller.stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue=QUEUE),
                                                    timeout=3)
                answered_in = time.monotonic() - lost_at
                assert refused.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
                assert replica.process is not None
                await asyncio.wait_for(replica.process.wait(), LEASE_TTL + 10)
                fenced_in = time.monotonic() - lost_at
                assert "fenced itself" in await replica.stop()
                assert worker.process.returncode is None  # the worker waits, holding its session

                etcd_cluster.restart(follower)
                await etcd_cluster.wait_healthy([m for m in etcd_cluster.members if m is not leader])
                await replica.start()
                # The worker re-registered at the new process, which took it over (adopting the session).
                await eventually(lambda: _owned_anew(group, etcd, before), timeout=30,
                                 message="the worker is owned by the restarted replica")
                recovered_in = time.monotonic() - lost_at
                assert (await caller.get(sid)).state == session_pb2.SESSION_STATE_OPEN
                # (retried on UNAVAILABLE as the client does: the new owner adopts a moment after etcd names it)
                assert await retried(lambda: caller.execute(sid, "echo", sid)) == sid
                print(f"\nquorum loss: create answered {refused.value.code().name} after {answered_in:.1f} s, "
                      f"replica fenced after {fenced_in:.1f} s; member and replica restarted: session OPEN "
                      f"again (same id) {recovered_in:.1f} s after the loss")
            finally:
                await caller.close()
    finally:
        await group.stop()



async def _owner_id(group: Replicas, etcd: EtcdClient, worker_id: str) -> str | None:
    from sessiond.store.records import store_pb2

    kv = await etcd.get(group.keys.worker((QUEUE, worker_id)))
    return None if kv is None else store_pb2.WorkerEntry.FromString(kv.value).owner_replica


async def _owned_anew(group: Replicas, etcd: EtcdClient, before: str | None) -> bool:
    now = await _owner_id(group, etcd, "quorum")
    return now is not None and now != before


async def test_a_worker_partitioned_from_its_replica_fails_its_session_clearly_on_every_replica(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    """The failure matrix's "replica partitioned from a worker only" row, with a loopback proxy that
    stops forwarding between the worker and its replica (both processes live, etcd fine): the owner
    fails the session `HEARTBEAT_TIMEOUT` after its heartbeat_timeout, durably; a watcher on another
    replica sees it; nothing hangs."""
    from tests.support.tcp_proxy import TcpProxy

    async with replicas(etcd_cluster, 2, "--heartbeat-timeout", "2s") as group, worker_pool() as start:
        owner, other = group.targets
        async with TcpProxy(owner) as proxy:
            worker = await start(proxy.address, QUEUE, max_sessions=1, worker_id="cut")
            await wait_owned(group, etcd, worker, owner)
            caller = Caller(other)
            try:
                sid = (await caller.create()).session_id
                states: list[int] = []
                call = caller.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=sid), timeout=30)

                async def watch() -> None:
                    async for reply in call:
                        states.append(reply.session.state)

                watching = asyncio.create_task(watch())
                await eventually(lambda: states == [session_pb2.SESSION_STATE_OPEN], message="watching")
                cut_at = time.monotonic()
                proxy.blackhole()
                await asyncio.wait_for(watching, 20)
                seen_in = time.monotonic() - cut_at
                assert states == [session_pb2.SESSION_STATE_OPEN, session_pb2.SESSION_STATE_FAILED]
                await group.failed_durably(etcd, sid, session_pb2.FAILURE_CAUSE_HEARTBEAT_TIMEOUT)
                print(f"\nworker cut from its replica: FAILED HEARTBEAT_TIMEOUT seen on another replica after "
                      f"{seen_in * 1000:.0f} ms (heartbeat_timeout 2 s)")
            finally:
                await caller.close()
