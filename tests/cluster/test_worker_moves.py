"""Workers that leave a replica that lives on.

A worker that moves to another replica while its old owner lives (review i12b, 4): its sessions
leave the old owner's table, so calls made there are forwarded to the new owner instead of being
answered from a stale copy, and the old owner's watchers are told to watch again (not left hanging).

The worker reaches replica A only through a loopback proxy (its target is "proxy,B"): closing the
proxy cuts its stream to A, and it registers at B with the sessions it holds. A, alive, sees the
takeover in etcd."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from google.protobuf import duration_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import replicas
from tests.cluster.test_replicas import OPEN, QUEUE, Caller, start_owned, wait_owned
from tests.integration.conftest import error_info
from tests.integration.workers.support import worker_pool
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio


async def test_calls_on_the_old_owner_follow_a_worker_that_moved(etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    async with replicas(etcd_cluster, 2) as group, worker_pool() as start, \
            TcpProxy(group.targets[0]) as to_a:
        a, b = group.targets
        worker = await start_owned(start, group, etcd, a, f"{to_a.address},{b}", QUEUE, max_sessions=2,
                                   worker_id="mover")
        at_a = Caller(a)
        try:
            options = session_pb2.SessionOptions(creation_timeout=duration_pb2.Duration(seconds=20),
                                                 reattach_timeout=duration_pb2.Duration(seconds=60))
            reply = await at_a.stub.CreateSession(session_service_pb2.CreateSessionRequest(
                task_queue=QUEUE, options=options), timeout=30)
            sid = reply.session.session_id
            assert await at_a.execute(sid, "echo", "before") == "before"

            updates: list[int] = []
            ended: list[grpc.aio.AioRpcError] = []

            async def watch() -> None:
                call = at_a.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=sid), timeout=60)
                try:
                    async for update in call:
                        updates.append(update.session.state)
                except grpc.aio.AioRpcError as error:
                    ended.append(error)

            watching = asyncio.create_task(watch())
            await eventually(lambda: updates == [OPEN], message="the watch on A started")

            await to_a.close()  # the worker's stream to A is cut; it registers at B with its session
            await wait_owned(group, etcd, worker, b)

            # A's watcher is told to watch again (it would hang: A's copy never changes again).
            await asyncio.wait_for(watching, 15)
            assert len(ended) == 1 and ended[0].code() == grpc.StatusCode.UNAVAILABLE, (updates, ended)
            info = error_info(ended[0])
            assert info is not None and info.reason == "OWNER_UNAVAILABLE"

            # Calls at A are forwarded to B, the owner: the session is OPEN there and not detached
            # (A's stale copy was detached), and an activity runs on the worker at once.
            async def seen_from_a() -> bool:
                session = await at_a.get(sid)
                return session.state == OPEN and not session.HasField("detached_since")
            await eventually(seen_from_a, timeout=10, message="A answers with the owner's view")
            assert await at_a.execute(sid, "echo", "after", timeout=10) == "after"
            assert (await at_a.complete(sid)).state == session_pb2.SESSION_STATE_CLOSED
            assert await group.open_sessions(etcd) == {}
        finally:
            await at_a.close()


async def test_creates_after_a_worker_died_go_only_to_replicas_with_a_worker(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    """Review i12b, 5: the worker keys of a dead worker stayed in etcd while its replica lived, so a
    replica without a worker of the queue kept routing creates to that replica, where they waited
    for their creation timeout. Now the owner deletes the keys once the worker is gone."""
    async with replicas(etcd_cluster, 3) as group, worker_pool() as start:
        a, b, c = group.targets
        dying = await start(a, QUEUE, max_sessions=1, worker_id="dying")
        living = await start(b, QUEUE, max_sessions=1, worker_id="living")
        await wait_owned(group, etcd, dying, a)
        await wait_owned(group, etcd, living, b)
        dying.signal(signal.SIGKILL)
        await dying.wait_exit()

        owned_by_a = group.keys.replica_workers(await group.replica_id(etcd, a))

        async def released() -> bool:
            return (await etcd.get(group.keys.worker((QUEUE, "dying"))) is None
                    and not (await etcd.get_prefix(owned_by_a, keys_only=True)).kvs)
        await eventually(released, timeout=10, message="A deleted the dead worker's ownership keys")

        at_c = Caller(c)  # no worker here: every create is routed, and only B has one
        try:
            for _ in range(6):
                session = await at_c.create(creation=5)
                assert session.worker.worker_id == "living"
                assert (await at_c.complete(session.session_id)).state == session_pb2.SESSION_STATE_CLOSED
        finally:
            await at_c.close()
        assert await group.open_sessions(etcd) == {}

