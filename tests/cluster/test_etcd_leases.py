"""Leases through the client against a real 3-member cluster: one keepalive stream for all of them,
expiry deleting keys, revocation, and a lease lost elsewhere reported to its holder."""

from __future__ import annotations

import asyncio

import pytest

from sessiond.store.etcd import EtcdClient, LeaseNotFoundError
from sessiond.store.etcd.watch import DELETE
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually

pytestmark = pytest.mark.asyncio

KEEPALIVE = {"grpc_method": "LeaseKeepAlive", "grpc_service": "etcdserverpb.Lease"}


async def test_many_leases_stay_alive_on_one_keepalive_stream(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    streams_before = etcd_cluster.metric("grpc_server_started_total", **KEEPALIVE)
    async with await EtcdClient.connect(etcd_cluster.endpoints) as client:
        leases = await asyncio.gather(*(client.grant_lease(2) for _ in range(40)))
        assert all(lease.ttl == 2 for lease in leases)
        await asyncio.gather(*(client.put(prefix + b"%d" % i, b"alive", lease=lease.id)
                               for i, lease in enumerate(leases)))
        # Four renewals at TTL/3 take longer than the TTL: only renewal can keep them alive that long.
        await eventually(lambda: all(lease.renewals >= 4 for lease in leases), timeout=15,
                         message="every lease renewed four times")

        assert len((await client.get_prefix(prefix, keys_only=True)).kvs) == 40
        for lease in leases:
            assert not lease.lost
            assert (await client.lease_time_to_live(lease.id)).ttl > 0
        loop = asyncio.get_running_loop()
        assert all(lease.deadline > loop.time() for lease in leases)
        # One stream carried every renewal: counted by etcd itself and by the client.
        assert etcd_cluster.metric("grpc_server_started_total", **KEEPALIVE) - streams_before == 1
        assert client.keeper.streams_opened == 1


async def test_an_expired_lease_deletes_its_keys(etcd: EtcdClient, prefix: bytes) -> None:
    lease = await etcd.grant_lease(2, keep_alive=False)
    put = await etcd.put(prefix + b"k", b"v", lease=lease.id)
    watch = await etcd.watch(prefix + b"k", start_revision=put.header.revision + 1)
    loop = asyncio.get_running_loop()
    granted_at = loop.time()
    batch = await asyncio.wait_for(watch.__anext__(), 10)
    elapsed = loop.time() - granted_at
    assert [e.type for e in batch.events] == [DELETE]
    assert elapsed >= 1.5  # never early (the grant was sent before granted_at: allow the round trip)
    assert await etcd.get(prefix + b"k") is None
    assert (await etcd.lease_time_to_live(lease.id)).ttl == -1
    await watch.cancel()


async def test_revoking_a_lease_deletes_its_keys_at_once_and_stops_renewing(etcd: EtcdClient, prefix: bytes) -> None:
    lease = await etcd.grant_lease(5)
    await etcd.put(prefix + b"k", b"v", lease=lease.id)
    await etcd.revoke_lease(lease)
    assert await etcd.get(prefix + b"k") is None
    assert lease.id not in [kept.id for kept in etcd.keeper.leases]
    with pytest.raises(LeaseNotFoundError):
        await etcd.revoke_lease(lease)
    with pytest.raises(LeaseNotFoundError):
        await etcd.put(prefix + b"k", b"v", lease=lease.id)


async def test_a_lease_revoked_elsewhere_is_reported_lost(etcd_cluster: EtcdCluster, etcd: EtcdClient,
                                                          prefix: bytes) -> None:
    lease = await etcd.grant_lease(2)
    async with await EtcdClient.connect(etcd_cluster.endpoints) as other:
        await other.revoke_lease(lease.id)
    reason = await asyncio.wait_for(lease.wait_lost(), 10)
    assert "lease not found" in reason
    assert lease.lost and lease.id not in [kept.id for kept in etcd.keeper.leases]
