"""Two rows of the failure matrix (distributed.md §3.10) that no other test covers.

A replica partitioned from the other replicas only (etcd and its workers still reach it): replica A
advertises its address to the others through a loopback proxy, so blackholing the proxy cuts exactly
the replica-to-replica path. A's own callers carry on, a call forwarded to A from B fails within the
caller's deadline (never hangs past it), the session stays OPEN and untouched, and forwarding works
again once the path heals. And a frozen worker (SIGSTOP), seen through another replica."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import Replicas
from tests.cluster.test_replicas import QUEUE, Caller, wait_owned
from tests.integration.workers.support import worker_pool
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio

DEADLINE = 3.0


class _Timer:
    """A timer due ``after`` seconds from now on the running loop; :meth:`lateness` is how late the
    loop ran it (0 when on time): what load added to anything this loop saw around that moment."""

    def __init__(self, after: float) -> None:
        loop = asyncio.get_running_loop()
        self._due = time.monotonic() + after
        self._fired: asyncio.Future[float] = loop.create_future()
        loop.call_later(after, lambda: self._fired.set_result(time.monotonic()))

    async def lateness(self) -> float:
        return max(0.0, await self._fired - self._due)


async def test_a_replica_cut_off_from_the_other_replicas_serves_its_own_callers_and_forwards_fail_clearly(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    group = Replicas(etcd_cluster, 2)
    owner, other = group.servers
    async with TcpProxy(owner.target) as peer_path, worker_pool() as start:
        owner.flags = (*owner.flags, "--advertise", peer_path.address)
        try:
            await group.start()
            peer_path.target_port = owner.port  # a replica whose port was taken starts on a new one
            worker = await start(owner.target, QUEUE, max_sessions=2, worker_id="kept")
            await wait_owned(group, etcd, worker, peer_path.address)
            mine, theirs = Caller(owner.target), Caller(other.target)
            try:
                sid = (await mine.create()).session_id
                assert await theirs.execute(sid, "echo", "forwarded") == "forwarded"

                peer_path.blackhole()
                assert await mine.execute(sid, "echo", "own caller") == "own caller"
                asked_at = time.monotonic()
                due = _Timer(DEADLINE)  # this loop's own lateness at the deadline, measured alongside
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await theirs.execute(sid, "echo", "cut", timeout=DEADLINE)
                answered_in = time.monotonic() - asked_at
                assert failed.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
                # A loaded box runs this test's loop late: that lateness is not the call's, so the bound
                # widens by it (and only by it).
                late = await due.lateness()
                assert answered_in < DEADLINE + 2.0 + late, (
                    f"the forwarded call outlived its deadline: {answered_in:.1f} s (this loop {late:.1f} s late)")
                stored = await group.stored(etcd, sid)
                assert stored is not None and stored.state == session_pb2.SESSION_STATE_OPEN
                assert (await mine.get(sid)).state == session_pb2.SESSION_STATE_OPEN
                assert await mine.execute(sid, "echo", "still own") == "still own"

                peer_path.resume()
                healed_at = time.monotonic()

                async def forwards_again() -> bool:
                    try:
                        return bool(await theirs.execute(sid, "echo", "healed", timeout=DEADLINE) == "healed")
                    except grpc.aio.AioRpcError:
                        return False

                await eventually(forwards_again, timeout=30, message="forwarding works again after the partition")
                print(f"\nreplicas partitioned from each other: own callers unaffected; a forwarded call answered "
                      f"{failed.value.code().name} after {answered_in:.2f} s (its deadline {DEADLINE:g} s); "
                      f"forwarding again {time.monotonic() - healed_at:.2f} s after the path healed; session OPEN")
            finally:
                await mine.close()
                await theirs.close()
        finally:
            await group.stop()


async def test_a_frozen_worker_fails_its_session_heartbeat_timeout_on_every_replica(
        etcd_cluster: EtcdCluster, etcd: EtcdClient) -> None:
    """The matrix's "worker frozen" row: a SIGSTOPped worker (its stream open, nothing read or sent)
    fails its session HEARTBEAT_TIMEOUT at its owner after heartbeat_timeout, durably in etcd, and a
    caller of another replica sees it (no hang, no leftover slot)."""
    group = Replicas(etcd_cluster, 2, "--heartbeat-timeout", "2s")
    owner, other = group.servers
    async with worker_pool() as start:
        try:
            await group.start()
            worker = await start(owner.target, QUEUE, max_sessions=1, worker_id="frozen")
            await wait_owned(group, etcd, worker, owner.target)
            caller = Caller(other.target)
            try:
                sid = (await caller.create()).session_id
                frozen_at = time.monotonic()
                os.kill(worker.pid, signal.SIGSTOP)
                try:
                    async def failed() -> bool:
                        return (await caller.get(sid)).state == session_pb2.SESSION_STATE_FAILED

                    await eventually(failed, timeout=20, interval=0.05, message="the frozen worker's session FAILED")
                    seen_in = time.monotonic() - frozen_at
                finally:
                    os.kill(worker.pid, signal.SIGCONT)
                await group.failed_durably(etcd, sid, session_pb2.FAILURE_CAUSE_HEARTBEAT_TIMEOUT)
                print(f"\nworker frozen: FAILED HEARTBEAT_TIMEOUT seen through another replica after "
                      f"{seen_in * 1000:.0f} ms (heartbeat_timeout 2 s)")
            finally:
                await caller.close()
        finally:
            await group.stop()
