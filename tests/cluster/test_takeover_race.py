"""A worker taken over by another replica while it registers here (review i12b, 7).

The replica claims the worker, reconciles its sessions, then connects its stream. If another replica
claims the worker in between, the fence is gone by the time the stream connects: before, the stream
stayed here, where every placement was refused (FENCE_LOST) for as long as the worker lived. Now the
stream ends with OWNER_UNAVAILABLE, so the worker registers again (and moves).

The server runs in this process, so the test can hold the registration exactly in that window."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import grpc
import pytest
from sessiond_client.api.v1 import session_service_pb2_grpc, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core.model import WorkerKey
from sessiond.server import create_server
from sessiond.store.base import ClaimWorker, Outcome
from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.store import EtcdStore
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.integration.conftest import error_info

pytestmark = pytest.mark.asyncio

QUEUE = "race"


async def test_a_worker_taken_over_during_its_registration_is_sent_away(etcd_cluster: EtcdCluster) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServerConfig(listen=f"127.0.0.1:{port}",
                          store=f"etcd://{','.join(etcd_cluster.endpoints)}/{name}?lease_ttl=5")
    server, port = await create_server(config)
    await server.start()
    rival = EtcdStore(await EtcdClient.connect(etcd_cluster.endpoints), f"/sessiond/{name}/".encode(), "127.0.0.1:9")
    await rival.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        cluster = server.engine.cluster
        assert cluster is not None
        ownership = cluster.ownership
        reconcile = ownership._reconcile

        async def then_taken_over(key: WorkerKey, *args: Any) -> Any:
            adopted = await reconcile(key, *args)
            # Another replica claims the worker now, and this replica's mirror sees it.
            snapshot = await rival.load_worker_sessions((key.task_queue, key.worker_id))
            [claimed] = await rival.commit([ClaimWorker((key.task_queue, key.worker_id), b"",
                                                        snapshot.fence_revision)])
            assert claimed.outcome is Outcome.COMMITTED
            await eventually(lambda: cluster.store.fence_of((key.task_queue, key.worker_id)) is None,
                             message="the replica saw the takeover")
            return adopted

        ownership._reconcile = then_taken_over  # type: ignore[method-assign]
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        call = stub.WorkerHeartbeat(timeout=20)
        await call.write(worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
            task_queue=QUEUE, worker_id="contested", max_concurrent_sessions=1)))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _message in call:
                pass  # (a Registered message may come first; the stream must then end)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        info = error_info(ended.value)
        assert info is not None and info.reason == "OWNER_UNAVAILABLE"
        assert WorkerKey(QUEUE, "contested") not in server.engine._connections
        assert rival.owner_of((QUEUE, "contested")) == rival.replica_id
    finally:
        await channel.close(None)
        await rival.close()
        await server.stop(0)
