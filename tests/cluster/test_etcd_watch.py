"""Watches through the client against real etcd: many on one stream, exact resume after the serving
member is killed or frozen (no gap, no duplicate), compaction reported, a slow reader bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sessiond.store.etcd import EtcdClient, EtcdCompactedError, EtcdUnavailableError, Watch
from sessiond.store.etcd.ops import prefix_end
from sessiond.store.etcd.watch import DELETE, PUT, STALL_TIMEOUT
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio

WATCH_STREAMS = {"grpc_method": "Watch", "grpc_service": "etcdserverpb.Watch"}


class Collector:
    """Reads a watch in the background; ``events`` is every (key, revision, type) received."""

    def __init__(self, watch: Watch) -> None:
        self.events: list[tuple[bytes, int, int]] = []
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._run(watch))

    async def _run(self, watch: Watch) -> None:
        try:
            async for batch in watch:
                assert all(e.kv.mod_revision <= batch.revision for e in batch.events)
                self.events.extend((e.kv.key, e.kv.mod_revision, e.type) for e in batch.events)
        except Exception as exc:  # the test looks at it
            self.error = exc

    def keys(self) -> list[bytes]:
        return [key for key, _, _ in self.events]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_many_watches_share_one_stream_and_each_sees_only_its_keys(
        etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    streams_before = etcd_cluster.metric("grpc_server_started_total", **WATCH_STREAMS)
    async with await EtcdClient.connect(etcd_cluster.endpoints) as client:
        start = (await client.put(prefix + b"start", b"")).header.revision + 1
        a = Collector(await client.watch(prefix + b"a/", prefix_end(prefix + b"a/"), start_revision=start))
        b = Collector(await client.watch(prefix + b"b/", prefix_end(prefix + b"b/"), start_revision=start))
        one = Collector(await client.watch(prefix + b"a/1", start_revision=start, prev_kv=True))
        for i in range(5):
            await client.put(prefix + b"a/%d" % i, b"x")
            await client.put(prefix + b"b/%d" % i, b"y")
        await client.delete(prefix + b"a/1")
        await eventually(lambda: len(a.events) == 6 and len(b.events) == 5 and len(one.events) == 2)
        assert a.keys() == [prefix + b"a/%d" % i for i in range(5)] + [prefix + b"a/1"]
        assert b.keys() == [prefix + b"b/%d" % i for i in range(5)]
        assert [t for _, _, t in one.events] == [PUT, DELETE]
        assert etcd_cluster.metric("grpc_server_started_total", **WATCH_STREAMS) - streams_before == 1
        assert client.watcher.streams_opened == 1
        for collector in (a, b, one):
            await collector.stop()


async def test_a_watch_from_a_compacted_revision_is_refused_with_the_compaction_point(
        etcd: EtcdClient, prefix: bytes) -> None:
    first = await etcd.put(prefix + b"k", b"1")
    last = await etcd.put(prefix + b"k", b"2")
    await etcd.compact(last.header.revision)
    with pytest.raises(EtcdCompactedError) as refused:
        # etcd confirms the watch, then cancels it once it finds the revision gone (3.4 and 3.5).
        watch = await etcd.watch(prefix + b"k", start_revision=first.header.revision)
        await asyncio.wait_for(watch.__anext__(), 10)
    assert refused.value.compact_revision == last.header.revision


async def test_compaction_while_a_watch_is_cut_off_is_reported_never_skipped(
        etcd_cluster: EtcdCluster, etcd: EtcdClient, prefix: bytes) -> None:
    async with TcpProxy(etcd_cluster.endpoints[0]) as proxy:
        async with await EtcdClient.connect([proxy.address]) as client:
            start = (await etcd.put(prefix + b"k", b"0")).header.revision
            watch = await client.watch(prefix, prefix_end(prefix), start_revision=start)
            seen = Collector(watch)
            await eventually(lambda: seen.keys() == [prefix + b"k"])

            proxy.blackhole()  # the watch's connection hears nothing from now on
            for i in range(3):
                await etcd.put(prefix + b"k", b"%d" % (i + 1))
            compacted = (await etcd.put(prefix + b"last", b"")).header.revision
            await etcd.compact(compacted)
            await proxy.cut()  # the stream breaks; the reconnect waits for the partition to heal
            proxy.resume()

            await eventually(lambda: seen.error is not None, message="the watch reports the compaction")
            assert isinstance(seen.error, EtcdCompactedError)
            assert seen.error.compact_revision == compacted
            assert watch.next_revision == start + 1 < compacted  # what it needed, and could not get
            assert seen.keys() == [prefix + b"k"]  # nothing after the gap was passed off as continuous


async def test_a_slow_reader_is_paused_and_caught_up_without_loss(etcd: EtcdClient, prefix: bytes) -> None:
    start = (await etcd.put(prefix + b"start", b"")).header.revision + 1
    watch = await etcd.watch(prefix + b"k/", prefix_end(prefix + b"k/"), start_revision=start, max_pending=2)
    revisions = [(await etcd.put(prefix + b"k/%02d" % i, b"x")).header.revision for i in range(20)]
    await eventually(lambda: watch.lagging, message="the watch paused for its reader")
    assert len(watch._pending) == 2  # bounded: the rest was not buffered
    got: list[int] = []
    async for batch in watch:
        got.extend(e.kv.mod_revision for e in batch.events)
        if len(got) >= 20:
            break
    assert got == revisions
    await watch.cancel()


async def _write_distinct_keys(client: EtcdClient, prefix: bytes, count: int, progress: Callable[[int], None]) -> None:
    """Put prefix/00000.. one after another; a write whose outcome is unknown is not repeated."""
    for i in range(count):
        try:
            await client.put(prefix + b"%05d" % i, b"v", timeout=2)
        except EtcdUnavailableError:
            pass  # outcome unknown: the read at the end tells whether it landed
        progress(i)


async def _assert_watch_saw_exactly_the_history(client: EtcdClient, prefix: bytes, seen: Collector) -> None:
    """The watch delivered every revision under ``prefix`` once and in order, compared at one revision:
    a marker written last bounds the history (a write whose outcome was unknown may land late)."""
    # The cluster may still be electing a leader (etcd answers "no leader" at once, and the client does
    # not retry a write): try again with a new marker key each time, so a marker whose outcome was
    # unknown but landed is simply part of the history compared below.
    loop = asyncio.get_running_loop()
    until = loop.time() + 30
    for attempt in range(1000):
        try:
            marker = (await client.put(prefix + b"~marker%03d" % attempt, b"", timeout=10)).header.revision
            break
        except EtcdUnavailableError:
            if loop.time() > until:
                raise
            await asyncio.sleep(0.2)  # back off between attempts (not synchronisation: the loop checks)
    stored = (await client.range(prefix, prefix_end(prefix), revision=marker)).kvs
    expected = sorted(((kv.key, kv.mod_revision, PUT) for kv in stored), key=lambda event: event[1])
    await eventually(lambda: any(rev >= marker for _, rev, _ in seen.events), timeout=20,
                     message=f"the watch reaches revision {marker} (has {len(seen.events)} events)")
    assert seen.error is None
    assert [e for e in seen.events if e[1] <= marker] == expected  # every revision once, in order


async def test_a_watch_resumes_at_the_exact_revision_after_its_member_is_killed(
        make_cluster: Callable[..., EtcdCluster], prefix: bytes) -> None:
    cluster = make_cluster()
    async with await EtcdClient.connect(cluster.endpoints) as watcher_client:
        start = (await watcher_client.put(prefix + b"start", b"")).header.revision + 1
        seen = Collector(await watcher_client.watch(prefix + b"k/", prefix_end(prefix + b"k/"),
                                                    start_revision=start))
        serving = cluster.member(watcher_client.watcher.endpoint or "")
        others = [m.endpoint for m in cluster.members if m is not serving]
        async with await EtcdClient.connect(others) as writer:
            written = 0

            def progress(i: int) -> None:
                nonlocal written
                written = i + 1

            writing = asyncio.create_task(_write_distinct_keys(writer, prefix + b"k/", 150, progress))
            await eventually(lambda: written >= 50 and len(seen.events) >= 20)
            cluster.kill(serving)
            await writing
            await _assert_watch_saw_exactly_the_history(writer, prefix + b"k/", seen)
        assert watcher_client.watcher.streams_opened == 2
        assert watcher_client.watcher.endpoint != serving.endpoint
        await seen.stop()


async def test_a_frozen_member_loses_its_streams_and_the_leases_and_watches_carry_on(
        make_cluster: Callable[..., EtcdCluster], prefix: bytes) -> None:
    cluster = make_cluster()
    async with await EtcdClient.connect(cluster.endpoints) as client:
        lease = await client.grant_lease(5)
        await client.put(prefix + b"leased", b"v", lease=lease.id)
        start = (await client.put(prefix + b"start", b"")).header.revision + 1
        seen = Collector(await client.watch(prefix + b"k/", prefix_end(prefix + b"k/"), start_revision=start))
        await eventually(lambda: lease.renewals >= 1)
        frozen = cluster.member(client.watcher.endpoint or "")
        keeper_was_there = client.keeper.endpoint == frozen.endpoint
        others = [m.endpoint for m in cluster.members if m is not frozen]

        cluster.freeze(frozen)  # its TCP connections stay open; it answers nothing
        try:
            async with await EtcdClient.connect(others) as writer:
                # If the frozen member led, these wait out an election (some may end "outcome unknown";
                # the history read at the end says what landed).
                await _write_distinct_keys(writer, prefix + b"k/", 30, lambda i: None)
                # The watch probes its quiet stream and moves; the keeper notices an unanswered renewal
                # within max(1 s, TTL/3) and renews elsewhere, inside the TTL.
                await _assert_watch_saw_exactly_the_history(writer, prefix + b"k/", seen)
                assert client.watcher.endpoint not in (None, frozen.endpoint)
                renewed = lease.renewals
                await eventually(lambda: lease.renewals >= renewed + 2, timeout=10, message="renewals go on")
                if keeper_was_there:
                    assert client.keeper.endpoint != frozen.endpoint
                assert not lease.lost and await writer.get(prefix + b"leased") is not None
        finally:
            cluster.thaw(frozen)
        await seen.stop()


async def test_a_quiet_healthy_stream_answers_its_probes_and_stays(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    async with await EtcdClient.connect(etcd_cluster.endpoints) as client:
        watcher = client.watcher
        # Probe often: the member must answer each. The stall timeout is the product's own (3 s): what
        # is tested is that probes are answered and a healthy stream stays, and a shorter one only adds
        # a load the test does not mean (a member or this loop slowed by a loaded box: 0.5 s once timed
        # out at load 6). The silence below is twice the stall timeout, so a stream whose probes went
        # unanswered would be torn down inside it.
        watcher.probe_interval = 0.1
        assert watcher.stall_timeout == STALL_TIMEOUT
        watch = await client.watch(prefix + b"quiet")
        endpoint = watcher.endpoint
        loop = asyncio.get_running_loop()
        until = loop.time() + 2 * STALL_TIMEOUT
        while loop.time() < until:  # six seconds of silence on the watched key: ~60 probes
            assert watcher.streams_opened == 1 and watcher.endpoint == endpoint
            await asyncio.sleep(0.05)
        # An empty stream is not probed (etcd need not answer it), and is not torn down either.
        await watch.cancel()
        until = loop.time() + 1.0
        while loop.time() < until:
            assert watcher.streams_opened == 1 and watcher.endpoint == endpoint
            await asyncio.sleep(0.05)
        put = await client.put(prefix + b"quiet", b"v")
        watch = await client.watch(prefix + b"quiet", start_revision=put.header.revision)
        assert (await asyncio.wait_for(watch.__anext__(), 5)).revision == put.header.revision
        assert watcher.streams_opened == 1
