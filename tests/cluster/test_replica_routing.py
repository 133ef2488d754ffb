"""Replicas on etcd (SPEC §6.5): where creates go and in which order waiting ones are served, with
real etcd members, sessiond replicas and workers as processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from sessiond_client import SessionClient, SessionState
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import Replicas, replicas
from tests.cluster.test_replicas import CLOSED, OPEN, QUEUE, Caller, wait_owned
from tests.integration.conftest import error_info
from tests.integration.workers.support import worker_pool

pytestmark = pytest.mark.asyncio


async def waiting(group: Replicas, etcd: EtcdClient) -> int:
    """Creates waiting cluster-wide for QUEUE, per the store."""
    reply = await etcd.get_prefix(group.keys.prefix + f"fifo/t/{QUEUE}/".encode(), keys_only=True)
    return len(reply.kvs)


@pytest.mark.parametrize("layout", ["worker-on-A", "worker-on-A-and-B"])
async def test_waiting_creates_are_served_oldest_first_across_replicas(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, layout: str) -> None:
    async with replicas(etcd_cluster, 2) as group, worker_pool() as start:
        a, b = group.targets
        workers = [await start(a, QUEUE, max_sessions=1, worker_id="fa")]
        if layout == "worker-on-A-and-B":
            workers.append(await start(b, QUEUE, max_sessions=1, worker_id="fb"))
        for worker, target in zip(workers, group.targets, strict=False):
            await wait_owned(group, etcd, worker, target)
        callers = [Caller(a), Caller(b)]
        try:
            # Fill every slot: each create lands on a replica with room (its own or the other's).
            holding = [await callers[i % 2].create(creation=0) for i in range(len(workers))]
            assert {s.worker.worker_id for s in holding} == {w.worker_id for w in workers}

            # Six creates, alternately at A and B, each after the previous one is waiting in the store.
            served: list[int] = []
            sessions: dict[int, session_pb2.Session] = {}

            async def create(n: int) -> None:
                session = await callers[n % 2].create(creation=60)
                served.append(n)
                sessions[n] = session

            tasks = []
            for n in range(6):
                tasks.append(asyncio.create_task(create(n)))
                await eventually(_counted(group, etcd, n + 1), timeout=20, message=f"create {n} waiting")

            # Free slots one at a time; each goes to the oldest create still waiting, wherever it
            # waits (with two workers, the first slot freed is B's and the oldest create waits at A).
            free = [s.session_id for s in reversed(holding)]
            expected: list[int] = []
            for n in range(6):
                # Complete through the other replica than the one holding the slot, half of the time.
                assert (await callers[n % 2].complete(free.pop(0))).state == CLOSED
                expected.append(n)
                await eventually(lambda: len(served) == len(expected), timeout=20, message=f"create {n} served")
                assert served == expected, f"served {served}, arrival order {expected}"
                assert sessions[n].state == OPEN
                free.append(sessions[n].session_id)
            await asyncio.gather(*tasks)
            await eventually(lambda: _count_is(group, etcd, 0), timeout=10, message="no ticket left")
            for sid in free:
                await callers[0].complete(sid)
        finally:
            for caller in callers:
                await caller.close()


async def _count_is(group: Replicas, etcd: EtcdClient, count: int) -> bool:
    return await waiting(group, etcd) == count


def _counted(group: Replicas, etcd: EtcdClient, count: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _count_is(group, etcd, count)


async def test_a_create_goes_to_the_replica_with_room_and_waiter_caps_hold(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2, "--max-waiters-per-queue", "2") as group, worker_pool() as start:
        a, b = group.targets
        full = await start(a, QUEUE, max_sessions=1, worker_id="full")
        roomy = await start(b, QUEUE, max_sessions=2, worker_id="roomy")
        await wait_owned(group, etcd, full, a)
        await wait_owned(group, etcd, roomy, b)
        at_a = Caller(a)
        try:
            first = await at_a.create(creation=0)
            assert first.worker.worker_id == "full"  # local first
            # A's worker is full: the next creates go to B's worker, which has room, without waiting.
            second = await at_a.create(creation=0)
            third = await at_a.create(creation=0)
            assert {second.worker.worker_id, third.worker.worker_id} == {"roomy"}
            with pytest.raises(grpc.aio.AioRpcError) as none_free:
                await at_a.create(creation=0)
            info = error_info(none_free.value)
            assert info is not None and info.reason == "NO_CAPACITY"

            # Two may wait at A; the third is refused with TOO_MANY_WAITERS.
            waiters = [asyncio.create_task(at_a.create(creation=60)) for _ in range(2)]
            await eventually(lambda: _count_is(group, etcd, 2), timeout=20, message="two waiting")
            with pytest.raises(grpc.aio.AioRpcError) as capped:
                await at_a.create(creation=60)
            info = error_info(capped.value)
            assert info is not None and info.reason == "TOO_MANY_WAITERS"

            await at_a.complete(second.session_id)  # a slot on B: the oldest waiter at A takes it
            placed = await asyncio.wait_for(asyncio.shield(asyncio.wait(waiters, return_when="FIRST_COMPLETED")), 20)
            assert len(placed[0]) == 1
            [got] = [t.result() for t in placed[0]]
            assert got.worker.worker_id == "roomy"
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            # A caller that gave up leaves nothing waiting in the store.
            await eventually(lambda: _count_is(group, etcd, 0), timeout=10, message="tickets removed")
        finally:
            await at_a.close()


async def test_the_client_follows_the_owner_hint_straight_to_the_owner(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2) as group, worker_pool() as start:
        owner, other = group.targets
        worker = await start(owner, QUEUE, max_sessions=2, worker_id="hinted")
        await wait_owned(group, etcd, worker, owner)
        # The client reaches `other` first (its first address); `other` has no worker of the queue.
        async with SessionClient(f"{other},{owner}", default_rpc_timeout=5) as client:
            session = await client.create_session(QUEUE, creation_timeout=10).__aenter__()
            assert session.info.worker.worker_id == "hinted"
            assert await session.execute_activity("echo", "through other") == "through other"
            # Freeze `other`: a call that still went through it would hang until its deadline.
            group.server_at(other).signal(signal.SIGSTOP)
            try:
                assert await asyncio.wait_for(session.execute_activity("echo", "direct"), 15) == "direct"
                info = await asyncio.wait_for(client.get_session_info(session.id), 15)
                assert info.state is SessionState.OPEN
                closed = await asyncio.wait_for(client.complete_session(session.id), 15)
                assert closed.state is SessionState.CLOSED
            finally:
                group.server_at(other).signal(signal.SIGCONT)
            await session.complete()


async def test_an_answer_for_a_remote_session_names_its_owner(etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2) as group, worker_pool() as start:
        owner, other = group.targets
        worker = await start(owner, QUEUE, max_sessions=1, worker_id="named")
        await wait_owned(group, etcd, worker, owner)
        at_owner, at_other = Caller(owner), Caller(other)
        try:
            session = await at_owner.create(creation=0)
            call = at_other.stub.GetSessionInfo(
                session_service_pb2.GetSessionInfoRequest(session_id=session.session_id), timeout=10)
            assert (await call).session.state == OPEN
            assert ("sessiond-owner", owner) in tuple(await call.trailing_metadata())
            direct = at_owner.stub.GetSessionInfo(
                session_service_pb2.GetSessionInfoRequest(session_id=session.session_id), timeout=10)
            await direct
            assert not [k for k, _ in await direct.trailing_metadata() or () if k == "sessiond-owner"]
            await at_other.complete(session.session_id)
        finally:
            await at_owner.close()
            await at_other.close()


TOKENS = "tok-a team-a caller\ntok-b team-b caller\ntok-ops ops operator,caller\n"


async def test_lists_show_the_whole_cluster_through_every_replica(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    peer = tmp_path / "peer"
    peer.write_text("tok-peer-of-the-replicas\n")  # replicas forward calls to each other as peers
    async with replicas(etcd_cluster, 3, "--tokens-file", str(tokens), "--peer-token-file", str(peer)) as group, \
            worker_pool() as start:
        for i, target in enumerate(group.targets):  # the worker role is granted to no token: open
            worker = await start(target, QUEUE, max_sessions=5, worker_id=f"l{i}")
            await wait_owned(group, etcd, worker, target)
        channels = [grpc.aio.insecure_channel(t) for t in group.targets]
        stubs = [session_service_pb2_grpc.SessionServiceStub(c) for c in channels]

        def auth(token: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {token}"),)

        async def create(i: int, token: str) -> str:
            reply = await stubs[i].CreateSession(session_service_pb2.CreateSessionRequest(
                task_queue=QUEUE, owner=f"o-{token}-{i}"), metadata=auth(token), timeout=20)
            return str(reply.session.session_id)

        async def listed(i: int, token: str, **filters: Any) -> list[str]:
            reply = await stubs[i].ListSessions(session_service_pb2.ListSessionsRequest(**filters),
                                                metadata=auth(token), timeout=20)
            return [s.session_id for s in reply.sessions]

        try:
            team_a = [await create(i, "tok-a") for i in range(3)]  # one on each replica's worker
            team_b = [await create(i, "tok-b") for i in (1, 2)]
            await stubs[0].CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=team_a[1]),
                                           metadata=auth("tok-a"), timeout=20)
            everyone = team_a + team_b
            for i in range(3):
                assert await listed(i, "tok-a") == team_a  # oldest first, the whole cluster
                assert await listed(i, "tok-b") == team_b  # a principal sees only its own
                assert await listed(i, "tok-ops") == everyone
                assert await listed(i, "tok-a", state=OPEN) == [team_a[0], team_a[2]]
                assert await listed(i, "tok-ops", state=CLOSED) == [team_a[1]]
                assert await listed(i, "tok-ops", owner=f"o-tok-b-{2}") == [team_b[1]]
                assert await listed(i, "tok-ops", task_queue="no-such-queue") == []
                assert await listed(i, "tok-a", principal="team-b") == []

            # Page through the cluster, each page from another replica: every session once, in order.
            seen: list[str] = []
            token = ""
            for page in range(10):
                reply = await stubs[page % 3].ListSessions(session_service_pb2.ListSessionsRequest(
                    page_size=2, page_token=token), metadata=auth("tok-ops"), timeout=20)
                seen += [s.session_id for s in reply.sessions]
                token = reply.next_page_token
                if not token:
                    break
            assert seen == everyone

            workers: list[str] = []
            token = ""
            for page in range(10):
                reply = await stubs[page % 3].ListWorkers(session_service_pb2.ListWorkersRequest(
                    page_size=1, page_token=token, task_queue=QUEUE), metadata=auth("tok-ops"), timeout=20)
                workers += [w.worker_id for w in reply.workers]
                token = reply.next_page_token
                if not token:
                    break
            assert workers == ["l0", "l1", "l2"]
            for stub in stubs:
                reply = await stub.ListWorkers(session_service_pb2.ListWorkersRequest(), metadata=auth("tok-ops"),
                                               timeout=20)
                assert {w.worker_id: w.open_sessions for w in reply.workers} == {"l0": 1, "l1": 1, "l2": 2}
        finally:
            for channel in channels:
                await channel.close(None)
