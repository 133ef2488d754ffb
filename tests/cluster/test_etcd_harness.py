"""The cluster harness itself: members start healthy on free ports, agree on a leader, and the fault
controls (kill -9, SIGSTOP/SIGCONT, restart on the same data) do what the fault tests rely on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually

pytestmark = pytest.mark.asyncio


async def test_the_shared_cluster_is_three_healthy_members_with_one_leader(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    assert len(set(etcd_cluster.endpoints)) == 3 and all(e.startswith("127.0.0.1:") for e in etcd_cluster.endpoints)
    assert all(etcd_cluster.is_healthy(m) for m in etcd_cluster.members)
    leader = await etcd_cluster.leader()
    async with await EtcdClient.connect(etcd_cluster.endpoints) as client:
        statuses = {m.name: await client.status(m.endpoint) for m in etcd_cluster.members}
        ids = {statuses[m.name].header.member_id: m for m in etcd_cluster.members}
        assert len(ids) == 3
        assert {s.leader for s in statuses.values()} == {statuses[leader.name].header.member_id}
        assert all(s.version.startswith("3.") for s in statuses.values())


async def test_freeze_kill_and_restart_a_member(make_cluster: Callable[..., EtcdCluster]) -> None:
    cluster = make_cluster()
    leader = await cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    async with await EtcdClient.connect([leader.endpoint]) as client:
        cluster.freeze(follower)
        assert not cluster.is_healthy(follower) and follower.running
        await client.put(b"/written-while-frozen", b"1")  # two of three members are a quorum
        cluster.thaw(follower)
        await cluster.wait_healthy([follower], timeout=10)

        pid = follower.pid
        cluster.kill(follower)
        assert not follower.running
        await client.put(b"/written-while-dead", b"2")
        cluster.restart(follower)
        assert follower.pid != pid
        await cluster.wait_healthy([follower], timeout=20)
    async with await EtcdClient.connect([follower.endpoint]) as local:
        async def has_both() -> bool:
            first = await local.range(b"/written-while-frozen", serializable=True)
            second = await local.range(b"/written-while-dead", serializable=True)
            return bool(first.kvs and second.kvs)
        await eventually(has_both, message="the restarted member caught up from its own data and the leader")

    cluster.kill(leader)
    new_leader = await cluster.leader(timeout=15)
    assert new_leader is not leader
