"""KV and Txn through the client against a real 3-member cluster: compares, the failure branch that
explains them, and the ownership fence of distributed.md §3.2."""

from __future__ import annotations

import pytest

from sessiond.store.etcd import EtcdClient, EtcdCompactedError, EtcdRequestError
from sessiond.store.etcd.ops import (
    compare,
    created_at,
    delete_op,
    get_op,
    lease_is,
    modified_at,
    prefix_end,
    put_op,
    value_is,
    version_is,
)

pytestmark = pytest.mark.asyncio


async def test_put_get_range_delete_round_trip(etcd: EtcdClient, prefix: bytes) -> None:
    first = await etcd.put(prefix + b"a", b"1")
    second = await etcd.put(prefix + b"b", b"2")
    assert second.header.revision > first.header.revision

    kv = await etcd.get(prefix + b"a")
    assert kv is not None and kv.value == b"1" and kv.version == 1 and kv.mod_revision == first.header.revision
    assert await etcd.get(prefix + b"missing") is None

    listed = await etcd.get_prefix(prefix)
    assert [k.key for k in listed.kvs] == [prefix + b"a", prefix + b"b"]
    assert listed.header.revision >= second.header.revision
    keys_only = await etcd.get_prefix(prefix, keys_only=True)
    assert [k.value for k in keys_only.kvs] == [b"", b""]

    deleted = await etcd.delete(prefix, prefix_end(prefix))
    assert deleted.deleted == 2
    assert (await etcd.get_prefix(prefix)).kvs == []


async def test_read_at_a_past_revision_and_after_compaction(etcd: EtcdClient, prefix: bytes) -> None:
    old = await etcd.put(prefix + b"k", b"old")
    new = await etcd.put(prefix + b"k", b"new")
    past = await etcd.range(prefix + b"k", revision=old.header.revision)
    assert past.kvs[0].value == b"old"

    await etcd.compact(new.header.revision)
    with pytest.raises(EtcdCompactedError):
        await etcd.range(prefix + b"k", revision=old.header.revision)
    assert (await etcd.get(prefix + b"k")) is not None


async def test_txn_runs_the_success_branch_only_when_every_compare_holds(etcd: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"k"
    put = await etcd.put(key, b"v1")
    rev = put.header.revision
    holds = [value_is(key, b"v1"), version_is(key, 1), created_at(key, rev), modified_at(key, rev), lease_is(key, 0),
             compare(key, "mod", ">", rev - 1), compare(key, "version", "<", 2), compare(key, "value", "!=", b"x")]
    for condition in holds:
        reply = await etcd.txn([condition], [put_op(prefix + b"ok", b"1")], [get_op(key)])
        assert reply.succeeded, condition
    fails = [value_is(key, b"other"), version_is(key, 2), created_at(key, 0), modified_at(key, rev + 1000),
             lease_is(key, 42)]
    for condition in fails:
        before = (await etcd.get(key))
        reply = await etcd.txn([condition], [put_op(key, b"must not happen")], [get_op(key)])
        assert not reply.succeeded, condition
        # The failure branch says why: the key as it is.
        assert reply.responses[0].response_range.kvs[0] == before
    assert (await etcd.get(key)).value == b"v1"  # type: ignore[union-attr]


async def test_one_false_compare_fails_the_whole_txn_atomically(etcd: EtcdClient, prefix: bytes) -> None:
    await etcd.put(prefix + b"a", b"1")
    reply = await etcd.txn([value_is(prefix + b"a", b"1"), created_at(prefix + b"b", 1)],
                           [put_op(prefix + b"x", b"1"), delete_op(prefix + b"a")])
    assert not reply.succeeded and list(reply.responses) == []
    assert await etcd.get(prefix + b"x") is None and await etcd.get(prefix + b"a") is not None


async def test_create_if_absent_lets_exactly_one_of_many_writers_win(etcd: EtcdClient, prefix: bytes) -> None:
    import asyncio

    key = prefix + b"owner"
    replies = await asyncio.gather(*(
        etcd.txn([created_at(key, 0)], [put_op(key, b"writer-%d" % i)], [get_op(key)]) for i in range(20)))
    winners = [i for i, r in enumerate(replies) if r.succeeded]
    assert len(winners) == 1
    stored = await etcd.get(key)
    assert stored is not None and stored.value == b"writer-%d" % winners[0]
    for reply in replies:
        if not reply.succeeded:
            assert reply.responses[0].response_range.kvs[0].value == stored.value


async def test_the_ownership_fence_stops_a_deposed_owner(etcd: EtcdClient, prefix: bytes) -> None:
    # distributed.md §3.2: every write about worker W compares the mod revision of W's key with the
    # revision its owner wrote; once another replica rewrote the key, the old owner's writes fail.
    worker_key = prefix + b"workers/q/w1"
    replica_a = await etcd.put(worker_key, b"owner=A")
    fence_a = replica_a.header.revision

    def place(fence: int, sid: bytes) -> list:  # type: ignore[type-arg]
        return [[modified_at(worker_key, fence)],
                [put_op(prefix + b"sessions/" + sid, b"OPEN"), put_op(prefix + b"wsess/q/w1/" + sid, b"")],
                [get_op(worker_key)]]

    placed = await etcd.txn(*place(fence_a, b"s1"))
    assert placed.succeeded
    # Writes about *other* keys do not move W's fence: A keeps placing.
    assert (await etcd.txn(*place(fence_a, b"s2"))).succeeded

    # Replica B takes W over (it read the key at fence_a and moves it with a compare of its own).
    takeover = await etcd.txn([modified_at(worker_key, fence_a)], [put_op(worker_key, b"owner=B")])
    assert takeover.succeeded
    fence_b = takeover.header.revision

    refused = await etcd.txn(*place(fence_a, b"s3"))
    assert not refused.succeeded
    now = refused.responses[0].response_range.kvs[0]
    assert now.value == b"owner=B" and now.mod_revision == fence_b  # A learns who owns W now
    assert await etcd.get(prefix + b"sessions/s3") is None
    index = await etcd.get_prefix(prefix + b"wsess/q/w1/", keys_only=True)
    assert [k.key.rsplit(b"/", 1)[1] for k in index.kvs] == [b"s1", b"s2"]

    # A second takeover attempt from the stale read loses too: exactly one owner at every revision.
    assert not (await etcd.txn([modified_at(worker_key, fence_a)], [put_op(worker_key, b"owner=C")])).succeeded
    assert (await etcd.txn(*place(fence_b, b"s4"))).succeeded


async def test_etcd_refusals_are_request_errors(etcd: EtcdClient, prefix: bytes) -> None:
    with pytest.raises(EtcdRequestError):
        # One key written twice in one Txn is refused by etcd ("duplicate key given in txn request").
        await etcd.txn([], [put_op(prefix + b"k", b"1"), put_op(prefix + b"k", b"2")])
    with pytest.raises(EtcdRequestError):
        await etcd.range(prefix + b"k", revision=10**12)  # a future revision
