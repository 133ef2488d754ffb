"""The janitor's reads and write in etcd: workers left owned by a replica that is gone, and the
one fenced Txn that ends their sessions and frees them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import unquote

from sessiond.store.base import EndSession, WorkerKey
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdUnavailableError
from sessiond.store.etcd.keys import Keys
from sessiond.store.etcd.ops import compare, delete_op, modified_at
from sessiond.store.etcd.ownership import Ownership
from sessiond.store.etcd.retention import RetentionBuckets
from sessiond.store.etcd.writer import TXN_TIMEOUT, end_ops

__all__ = ["Orphans"]


class Orphans:
    """Finds and releases the workers of replicas that are gone.

    Args:
        client: the store's client.
        keys: the cluster's key layout.
        ownership: this replica's mirrors (which replicas are live).
        buckets: the retention buckets the terminal records go on.
    """

    def __init__(self, client: EtcdClient, keys: Keys, ownership: Ownership, buckets: RetentionBuckets) -> None:
        self.client = client
        self.keys = keys
        self.ownership = ownership
        self.buckets = buckets
        self._gone_since: dict[str, float] = {}  # replicas seen gone by the janitor, since when (loop time)

    async def orphaned_workers(self, gone_for: float) -> list[tuple[str, WorkerKey]]:
        """Workers still recorded as owned by a replica that has been gone (no ``replicas/`` key,
        per the mirror) for at least ``gone_for`` seconds: (dead replica id, worker)."""
        now = asyncio.get_running_loop().time()
        prefix = self.keys.prefix + b"rworkers/"
        reply = await self.client.get_prefix(prefix, keys_only=True)
        out = []
        for kv in reply.kvs:
            rid, _, rest = kv.key[len(prefix):].decode().partition("/")
            rid = unquote(rid)
            if rid in self.ownership.replicas:
                self._gone_since.pop(rid, None)
                continue
            since = self._gone_since.setdefault(rid, now)
            if now - since >= gone_for:
                queue, _, worker = rest.partition("/")
                out.append((rid, (unquote(queue), unquote(worker))))
        return out

    async def release_orphan(self, replica_id: str, worker: WorkerKey, seen_revision: int,
                             ends: Sequence[EndSession]) -> bool:
        """In one Txn, if nobody took ``worker`` over since ``seen_revision``, the dead replica
        still owns it and etcd (not a possibly lagging mirror) says that replica is gone: store the
        terminal records of its open sessions, free their slots and owner keys, and delete the
        worker's ownership keys. False otherwise (nothing written).

        The fence compare alone is not enough: a replica that took the worker over between the
        janitor's listing and its read of the sessions would be matched by it (review i12b, 2). A
        takeover deletes ``rworkers/<dead>/q/w``; a live replica has its ``replicas/`` key."""
        await self.buckets.refresh(len(ends))
        bucket = self.buckets.lease()
        owned_by_dead = self.keys.replica_worker(replica_id, worker)
        success: list[pb.RequestOp] = [delete_op(self.keys.worker(worker)), delete_op(owned_by_dead)]
        for op in ends:
            success += end_ops(self.keys, self.ownership.replica_id, op, bucket)
        compares = [modified_at(self.keys.worker(worker), seen_revision),
                    compare(owned_by_dead, "version", ">", 0),
                    compare(self.keys.replica(replica_id), "version", "==", 0)]
        try:
            reply = await self.client.txn(compares, success, timeout=TXN_TIMEOUT)
        except EtcdUnavailableError:
            return False
        return bool(reply.succeeded)
