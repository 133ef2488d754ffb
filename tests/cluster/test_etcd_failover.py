"""Member faults under load, against real etcd: kill -9 of the leader during writes, and a killed
member restarted on its own data directory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sessiond.store.etcd import EtcdClient, EtcdOutcomeUnknownError, EtcdUnavailableError
from sessiond.store.etcd.ops import created_at, get_op, prefix_end, put_op
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually

pytestmark = pytest.mark.asyncio


async def test_killing_the_leader_during_writes_stalls_them_then_they_succeed_and_none_lies(
        make_cluster: Callable[..., EtcdCluster], prefix: bytes) -> None:
    cluster = make_cluster()
    leader = await cluster.leader()
    async with await EtcdClient.connect(cluster.endpoints) as client:
        loop = asyncio.get_running_loop()
        committed: list[int] = []  # Txns that answered succeeded=True
        unknown: list[int] = []  # Txns whose outcome was lost (never retried)
        refused: list[int] = []  # Txns that answered succeeded=False: must never happen here
        killed_at: list[float] = []
        first_success_after_kill: list[float] = []

        async def writer(worker: int) -> None:
            # Each Txn creates its own key if absent: a committed Txn that the client silently
            # repeated would come back succeeded=False; a lost one would be absent.
            for i in range(worker, 10**6, 4):
                if first_success_after_kill and len(committed) >= 400:
                    return
                key = prefix + b"k/%07d" % i
                started = loop.time()
                try:
                    reply = await client.txn([created_at(key, 0)], [put_op(key, b"%d" % i)], [get_op(key)],
                                             timeout=1.0)
                except EtcdOutcomeUnknownError:
                    unknown.append(i)
                    continue
                except EtcdUnavailableError:
                    unknown.append(i)  # not even sent (no member ready); counted with the unknown ones
                    continue
                (committed if reply.succeeded else refused).append(i)
                if reply.succeeded and killed_at and started > killed_at[0] and not first_success_after_kill:
                    first_success_after_kill.append(loop.time())

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        await eventually(lambda: len(committed) >= 100, timeout=30)
        cluster.kill(leader)
        killed_at.append(loop.time())
        await asyncio.wait_for(asyncio.gather(*writers), 60)

        stall = first_success_after_kill[0] - killed_at[0]
        print(f"\nleader kill -9 -> writes OK again after {stall:.2f} s; {len(committed)} committed, "
              f"{len(unknown)} with unknown outcome")
        assert refused == []
        stored = {int(kv.key.rsplit(b"/", 1)[1]): kv for kv in (await client.get_prefix(prefix + b"k/")).kvs}
        assert set(committed) <= set(stored)  # every acknowledged write survived the leader's death
        assert set(stored) <= set(committed) | set(unknown)  # nothing appeared that nobody wrote
        assert all(kv.version == 1 for kv in stored.values())  # each written exactly once

        # The killed member comes back on its own data directory and catches up.
        cluster.restart(leader)
        await cluster.wait_healthy([leader])
        async with await EtcdClient.connect([leader.endpoint]) as local:
            async def caught_up() -> bool:
                reply = await local.range(prefix + b"k/", prefix_end(prefix + b"k/"), serializable=True,
                                          keys_only=True)
                return len(reply.kvs) == len(stored)
            await eventually(caught_up, timeout=20, message="restarted member has every key")
