"""Replicas on etcd (SPEC §6.5), as users run them: real etcd members, sessiond replicas and
workers as processes on free ports. Owner and request-id uniqueness hold across replicas (the
hard limit, under a storm with ownership changes, is test_replica_storm.py); session-scoped calls
work on any replica; a replica killed with kill -9 loses no session whose worker lives."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import FAILOVER_WINDOW, Replicas, replicas, retried
from tests.integration.conftest import error_info
from tests.integration.workers.support import ClientWorkerProcess, worker_pool

pytestmark = pytest.mark.asyncio

QUEUE = "cq"
OPEN = session_pb2.SESSION_STATE_OPEN
CLOSED = session_pb2.SESSION_STATE_CLOSED


class Caller:
    """A raw caller of one replica."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = session_service_pb2_grpc.SessionServiceStub(self.channel)

    async def create(self, *, owner: str = "", request_id: str = "", creation: float = 30.0,
                     task_queue: str = QUEUE) -> session_pb2.Session:
        options = session_pb2.SessionOptions(creation_timeout=duration_pb2.Duration(seconds=int(creation)))
        reply = await self.stub.CreateSession(session_service_pb2.CreateSessionRequest(
            task_queue=task_queue, options=options, owner=owner, request_id=request_id), timeout=creation + 10)
        return reply.session

    async def get(self, session_id: str) -> session_pb2.Session:
        reply = await self.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=session_id),
                                               timeout=10)
        return reply.session

    async def complete(self, session_id: str) -> session_pb2.Session:
        reply = await self.stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=session_id),
                                                timeout=10)
        return reply.session

    async def execute(self, session_id: str, activity: str, *args: Any, timeout: float = 20.0) -> Any:
        request = session_service_pb2.ExecuteActivityRequest(
            session_id=session_id, activity_type=activity,
            input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(list(args)).encode()))
        reply = await self.stub.ExecuteActivity(request, timeout=timeout)
        assert reply.HasField("result"), reply
        return json.loads(reply.result.data)

    async def close(self) -> None:
        await self.channel.close(None)


async def wait_owned(group: Replicas, etcd: EtcdClient, worker: ClientWorkerProcess, address: str) -> None:
    await eventually(lambda: _owned_by(group, etcd, worker.worker_id, address), timeout=20,
                     message=f"worker {worker.worker_id} owned by {address}")


async def _owned_by(group: Replicas, etcd: EtcdClient, worker_id: str, address: str) -> bool:
    return await group.owner(etcd, QUEUE, worker_id) == address


START_ATTEMPTS = 5


async def start_owned(start: Callable[..., Awaitable[ClientWorkerProcess]], group: Replicas, etcd: EtcdClient,
                      address: str, target: str, *args: Any, **kwargs: Any) -> ClientWorkerProcess:
    """Start a worker on ``target``, a list of replicas with ``address`` first, owned by ``address``.

    gRPC uses the first address that *answers*, and tries the next one when the first is slow to
    (a fraction of a second): on a loaded box a busy replica loses the worker to the next in the
    list. Then the worker is killed, the replica that got it lets it go, and it starts again."""
    for _ in range(START_ATTEMPTS):
        worker = await start(target, *args, **kwargs)
        worker_id = worker.worker_id
        owner = await eventually(lambda worker_id=worker_id: group.owner(etcd, QUEUE, worker_id), timeout=20,
                                 message=f"worker {worker_id} owned by a replica")
        if owner == address:
            return worker
        await worker.reap()  # kill -9: the replica that took it releases it
        await eventually(lambda worker_id=worker_id: _released(group, etcd, worker_id), timeout=20,
                         message=f"worker {worker_id} released by {owner}")
    raise AssertionError(f"{START_ATTEMPTS} times a worker on {target} registered elsewhere than {address}")


async def _released(group: Replicas, etcd: EtcdClient, worker_id: str) -> bool:
    return await group.owner(etcd, QUEUE, worker_id) is None


async def test_one_owner_and_one_request_id_across_replicas(etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster) as group, worker_pool() as start:
        for i, target in enumerate(group.targets):
            worker = await start(target, QUEUE, max_sessions=5, worker_id=f"u{i}")
            await wait_owned(group, etcd, worker, target)
        callers = [Caller(t) for t in group.targets]
        try:
            outcomes = await asyncio.gather(*(c.create(owner="the-owner", creation=0) for c in callers),
                                            return_exceptions=True)
            won = [o for o in outcomes if isinstance(o, session_pb2.Session)]
            lost = [o for o in outcomes if not isinstance(o, session_pb2.Session)]
            assert len(won) == 1 and len(lost) == 2, outcomes
            for error in lost:
                assert isinstance(error, grpc.aio.AioRpcError), error
                info = error_info(error)
                assert info is not None and info.reason == "EXISTING_OPEN_SESSION"

            same = await asyncio.gather(*(c.create(request_id="req-42", creation=0) for c in callers))
            assert len({s.session_id for s in same}) == 1, same
            assert all(s.state == OPEN for s in same)
        finally:
            for caller in callers:
                await caller.close()


async def test_session_calls_work_on_any_replica(etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster) as group, worker_pool() as start:
        owner, other, third = group.targets
        worker = await start(owner, QUEUE, max_sessions=2, worker_id="any")
        await wait_owned(group, etcd, worker, owner)
        remote = Caller(other)
        watcher = Caller(third)
        try:
            session = await remote.create()  # no worker at `other`: placed by the owner replica
            assert session.worker.worker_id == "any"
            sid = session.session_id
            assert (await watcher.get(sid)).state == OPEN
            assert await remote.execute(sid, "echo", "hello") == "hello"

            updates: list[int] = []

            async def watch() -> None:
                call = watcher.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=sid), timeout=30)
                async for reply in call:
                    updates.append(reply.session.state)

            watching = asyncio.create_task(watch())
            await eventually(lambda: updates == [OPEN], message="remote watch started")
            closed = await remote.complete(sid)
            assert closed.state == CLOSED
            await asyncio.wait_for(watching, 10)
            assert updates == [OPEN, CLOSED]
            assert (await watcher.get(sid)).state == CLOSED
            assert (await remote.complete(sid)).state == CLOSED  # a no-op on a terminal session
            again = await watcher.stub.RecreateSession(session_service_pb2.RecreateSessionRequest(
                recreate_token=session.recreate_token), timeout=20)
            assert again.session.worker.worker_id == "any" and again.session.session_id != sid
            assert (await remote.get(again.session.session_id)).state == OPEN
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await remote.get("no-such-session")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await remote.close()
            await watcher.close()


@pytest.mark.parametrize(("how", "in_flight_reasons", "flags"), [
    (signal.SIGKILL, {"OWNER_UNAVAILABLE"}, ()),
    # A SIGTERM (a rolling restart) without a drain: the replica tells its workers it restarts at
    # once; they move, and the activity in flight is cut. (With the drain it finishes first:
    # test_replica_drain.py.)
    (signal.SIGTERM, {"OWNER_UNAVAILABLE", "SHUTTING_DOWN"}, ("--drain-timeout", "0")),
], ids=["kill-9", "sigterm-drain-timeout-0"])
async def test_the_death_of_the_owner_replica_loses_no_session_whose_worker_lives(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, tmp_path: Path, how: signal.Signals,
        in_flight_reasons: set[str], flags: tuple[str, ...]) -> None:
    async with replicas(etcd_cluster, 3, *flags) as group, worker_pool() as start:
        worker = await start(group.all_targets, QUEUE, max_sessions=3, worker_id="survivor")
        # Whichever replica answered first (gRPC tries the next address if the first is slow).
        owner = await eventually(lambda: group.owner(etcd, QUEUE, worker.worker_id), timeout=20,
                                 message="the worker is owned by a replica")
        other = next(t for t in group.targets if t != owner)
        caller = Caller(other)
        try:
            sessions = [await caller.create() for _ in range(3)]
            ids = [s.session_id for s in sessions]
            marker = tmp_path / "activity"
            in_flight = asyncio.create_task(caller.execute(ids[0], "wait_cancelled", str(marker), 3.0, timeout=30))
            await eventually(lambda: marker.with_suffix(".started").exists(), timeout=10,
                             message="the activity runs on the worker")

            killed_at = time.monotonic()
            group.server_at(owner).signal(how)
            await eventually(lambda: _moved(group, etcd, worker.worker_id, owner), timeout=FAILOVER_WINDOW,
                             message="the worker is owned by a live replica")
            adopted_in = time.monotonic() - killed_at
            print(f"\nworker adopted {adopted_in * 1000:.0f} ms after {how.name} of its replica")

            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await in_flight
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
            info = error_info(lost.value)
            assert info is not None and info.reason in in_flight_reasons

            for sid in ids:  # the same ids, OPEN, usable from a surviving replica (once it adopted them)
                assert (await caller.get(sid)).state == OPEN
                assert await retried(lambda sid=sid: caller.execute(sid, "echo", sid)) == sid
            open_now = await group.open_sessions(etcd)
            assert sorted(open_now[(QUEUE, "survivor")]) == sorted(ids)
        finally:
            await caller.close()


async def _moved(group: Replicas, etcd: EtcdClient, worker_id: str, dead: str) -> bool:
    address = await group.owner(etcd, QUEUE, worker_id)
    return address is not None and address != dead


async def test_a_killed_worker_fails_its_session_for_a_watcher_on_another_replica(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2) as group, worker_pool() as start:
        owner, other = group.targets
        worker = await start(owner, QUEUE, max_sessions=1, worker_id="mortal")
        await wait_owned(group, etcd, worker, owner)
        caller = Caller(other)
        try:
            sid = (await caller.create()).session_id
            updates: list[session_pb2.Session] = []

            async def watch() -> None:
                call = caller.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=sid), timeout=30)
                async for reply in call:
                    updates.append(reply.session)

            watching = asyncio.create_task(watch())
            await eventually(lambda: len(updates) == 1, message="remote watch started")
            killed_at = time.monotonic()
            worker.signal(signal.SIGKILL)
            await asyncio.wait_for(watching, 20)
            seen_in = (time.monotonic() - killed_at) * 1000
            print(f"\nworker kill -9 -> FAILED seen on another replica after {seen_in:.0f} ms")
            assert [u.state for u in updates] == [OPEN, session_pb2.SESSION_STATE_FAILED]
            assert updates[-1].failure.cause == session_pb2.FAILURE_CAUSE_WORKER_LOST
            assert await group.open_sessions(etcd) == {}
        finally:
            await caller.close()
