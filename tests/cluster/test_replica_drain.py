"""A replica stopped with SIGTERM (a rolling restart) drains first: an activity in flight on its
worker, asked through another replica (forwarded), finishes and its caller gets the real result;
an activity asked meanwhile is refused with RECOVERING through the forwarding replica too (nothing
was sent: retry), so is a create at the draining replica, while a create at the other one waits there
for room; then the worker moves to the other replica, the sessions stay OPEN with the same ids and
run the next activity there, and the waiting create is placed on the worker. (Without the drain,
``--drain-timeout 0``, the activity is cut: test_replicas.py, ``sigterm-drain-timeout-0``.)

Real etcd, replicas and a worker as processes; every wait polls with a deadline."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import FAILOVER_WINDOW, Replicas, replicas, retried
from tests.cluster.test_replicas import OPEN, QUEUE, Caller
from tests.integration.conftest import error_info
from tests.integration.faults import not_serving
from tests.integration.workers.support import worker_pool

pytestmark = pytest.mark.asyncio


async def test_sigterm_of_the_owner_replica_lets_a_forwarded_activity_finish_then_the_worker_moves(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, tmp_path: Path) -> None:
    async with replicas(etcd_cluster, 2, "--drain-timeout", "120") as group, worker_pool() as start:
        worker = await start(group.all_targets, QUEUE, max_sessions=3, worker_id="mover")
        # Whichever replica answered first owns it; the worker can reach both.
        owner = await eventually(lambda: group.owner(etcd, QUEUE, worker.worker_id), timeout=20,
                                 message="the worker is owned by a replica")
        other = next(t for t in group.targets if t != owner)
        caller = Caller(other)  # every call of the test is forwarded to the owner
        try:
            sid, idle = (await caller.create()).session_id, (await caller.create()).session_id
            gate = tmp_path / "gate"  # the activity runs until the test creates this file
            in_flight = asyncio.create_task(caller.execute(sid, "gate", str(gate), timeout=120))
            await eventually(lambda: gate.with_suffix(".started").exists(), timeout=10,
                             message="the activity runs on the worker")

            group.server_at(owner).signal(signal.SIGTERM)
            await eventually(lambda: not_serving(owner), timeout=10, message="the owner drains (NOT_SERVING)")
            # New work is refused through the forwarding replica as on the owner: nothing was sent.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await caller.execute(idle, "echo", "during the drain")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            info = error_info(refused.value)
            assert info is not None and info.reason == "RECOVERING", refused.value

            # A create at the draining replica is not placed there (nothing was: retry) ...
            drained = Caller(owner)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as no_create:
                    await drained.create(creation=0)
            finally:
                await drained.close()
            assert no_create.value.code() == grpc.StatusCode.UNAVAILABLE
            info = error_info(no_create.value)
            assert info is not None and info.reason == "RECOVERING", no_create.value
            # ... and one at the other replica waits there for room: the worker arriving after the drain.
            waiting = asyncio.create_task(caller.create(creation=60))

            assert not in_flight.done()
            assert (await caller.get(sid)).state == OPEN  # reads go on
            # The activity in flight ends on the worker, never cancelled, and its caller has the result.
            gate.touch()
            assert await asyncio.wait_for(in_flight, 30) == "done"

            await eventually(lambda: _owned_elsewhere(group, etcd, owner), timeout=10 + FAILOVER_WINDOW,
                             message="the worker moved to the other replica")
            for session_id in (sid, idle):  # the same ids, OPEN, running activities on the other replica
                assert (await caller.get(session_id)).state == OPEN
                assert await retried(lambda s=session_id: caller.execute(s, "echo", s)) == session_id
            late = (await asyncio.wait_for(waiting, 60)).session_id
            assert (await caller.get(late)).worker.worker_id == "mover"
            assert sorted((await group.open_sessions(etcd))[(QUEUE, "mover")]) == sorted((sid, idle, late))
            assert worker.process.returncode is None
        finally:
            await caller.close()


async def _owned_elsewhere(group: Replicas, etcd: EtcdClient, gone: str) -> bool:
    address = await group.owner(etcd, QUEUE, "mover")
    return address is not None and address != gone

