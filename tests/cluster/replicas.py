"""sessiond replicas as real processes for the cluster tier: ``python -m sessiond serve --store
etcd://...`` on free ports, short lease TTL and failover window, plus reads of the store's keys.

Everything waits by polling with a deadline (:func:`tests.integration.conftest.eventually`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from sessiond_client.api.v1 import session_pb2

from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.store import Keys
from sessiond.store.records import store_pb2
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.integration.conftest import eventually
from tests.integration.faults import ServerProcess

LEASE_TTL = 5  # 2 s (etcd's minimum) leaves a loaded 2-core box too little slack before self-fencing
FAILOVER_WINDOW = 8


class Replicas:
    """``count`` replicas of one sessiond cluster over ``etcd`` (a fresh cluster name unless ``name``;
    ``endpoints`` replaces etcd's, e.g. by proxies in front of them)."""

    def __init__(self, etcd: EtcdCluster, count: int = 3, *extra: str, name: str | None = None,
                 endpoints: list[str] | None = None, failover_window: float = FAILOVER_WINDOW) -> None:
        self.name = name or f"t{uuid.uuid4().hex[:10]}"
        self.store = (f"etcd://{','.join(endpoints or etcd.endpoints)}/{self.name}"
                      f"?lease_ttl={LEASE_TTL}&failover_window={failover_window:g}")
        # REPLICA_LOG_LEVEL=INFO shows what each replica did when a test fails.
        level = os.environ.get("REPLICA_LOG_LEVEL", "WARNING")
        self.servers = [ServerProcess("--store", self.store, "--log-level", level, *extra) for _ in range(count)]
        self.keys = Keys(f"/sessiond/{self.name}/".encode())

    @property
    def targets(self) -> list[str]:
        """Each replica's host:port."""
        return [s.target for s in self.servers]

    @property
    def all_targets(self) -> str:
        """Every replica, as one comma-separated target (workers and callers move between them)."""
        return ",".join(self.targets)

    async def start(self) -> Replicas:
        """Start every replica and wait until each listens (read ``targets`` after this: a replica
        whose free port another program took first starts again on a new one)."""
        await asyncio.gather(*(s.start() for s in self.servers))
        return self

    async def stop(self) -> str:
        """Kill every replica still running; return what they logged (stderr)."""
        logs = []
        for server in self.servers:
            logs.append(f"--- replica {server.target}:\n{await server.stop()}")
        return "\n".join(logs)

    async def open_sessions(self, etcd: EtcdClient) -> dict[tuple[str, str], list[str]]:
        """The store's open sessions per worker (its slot index, ``wsess/``)."""
        prefix = self.keys.prefix + b"wsess/"
        reply = await etcd.get_prefix(prefix, keys_only=True)
        out: dict[tuple[str, str], list[str]] = {}
        for kv in reply.kvs:
            queue, worker, sid = kv.key[len(prefix):].decode().split("/")
            out.setdefault((queue, worker), []).append(sid)
        return out

    async def stored(self, etcd: EtcdClient, session_id: str) -> session_pb2.Session | None:
        """The session as the store has it."""
        kv = await etcd.get(self.keys.session(session_id))
        if kv is None:
            return None
        return session_pb2.Session.FromString(store_pb2.SessionEntry.FromString(kv.value).record)

    async def failed_durably(self, etcd: EtcdClient, session_id: str, cause: int, timeout: float = 10.0) -> None:
        """Wait until the store has the session FAILED with ``cause`` and no slot held for it. The
        owner shows an end it decided (GetSessionInfo) at once; the store has it one Txn later."""
        async def settled() -> bool:
            stored = await self.stored(etcd, session_id)
            return (stored is not None and stored.state == session_pb2.SESSION_STATE_FAILED
                    and stored.failure.cause == cause and await self.open_sessions(etcd) == {})

        await eventually(settled, timeout=timeout, interval=0.05,
                         message=f"session {session_id} stored FAILED ({cause}) with no slot held")

    async def owner(self, etcd: EtcdClient, task_queue: str, worker_id: str) -> str | None:
        """The address of the replica owning a worker, per the store."""
        kv = await etcd.get(self.keys.worker((task_queue, worker_id)))
        if kv is None:
            return None
        rid = store_pb2.WorkerEntry.FromString(kv.value).owner_replica
        replica = await etcd.get(self.keys.replica(rid))
        return None if replica is None else store_pb2.ReplicaRecord.FromString(replica.value).address

    async def replica_id(self, etcd: EtcdClient, address: str) -> str:
        """The id of the live replica listening at ``address``, per its ``replicas/`` key."""
        for kv in (await etcd.get_prefix(self.keys.replicas)).kvs:
            record = store_pb2.ReplicaRecord.FromString(kv.value)
            if record.address == address:
                return record.replica_id
        raise AssertionError(f"no live replica at {address}")

    def server_at(self, address: str) -> ServerProcess:
        """The replica listening at ``address``."""
        return next(s for s in self.servers if s.target == address)


@contextlib.asynccontextmanager
async def replicas(etcd: EtcdCluster, count: int = 3, *extra: str) -> AsyncIterator[Replicas]:
    """Started replicas, killed afterwards."""
    group = Replicas(etcd, count, *extra)
    try:
        yield await group.start()
    except BaseException:
        print(await group.stop())  # shown with the failure
        raise
    finally:
        await group.stop()


async def retried(call: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """``call()``, retried while it fails UNAVAILABLE (as the client library does), within a deadline:
    etcd names a worker's new owner a moment before that replica has adopted its sessions."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)
