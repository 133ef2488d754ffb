"""Closing the etcd store never hangs (the cause of the i12fix-bug1 teardown hangs).

On Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives in the same loop step as the
awaited result. The watcher waited for a watch's confirmation that way, so a store closed just as
one of its mirrors' watches was confirmed cancelled the mirror task, which went on to read the
watch, and ``close()`` waited for it for ever."""

from __future__ import annotations

import asyncio
import random

import pytest

from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.store import EtcdStore
from sessiond.testing.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.asyncio


async def test_a_watch_cancelled_as_its_confirmation_arrives_is_cancelled(etcd: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"k"
    watching = asyncio.create_task(etcd.watch(key))
    watcher = etcd.watcher
    await asyncio.sleep(0)  # one step: the call registers its watch and waits for etcd to confirm it
    watch = next(w for w in watcher._active if w.key == key)
    assert not watching.done() and not watch._created.done()
    watch._created.set_result(None)  # etcd's confirmation arrives ...
    watching.cancel()                # ... in the loop step in which its caller is cancelled
    await asyncio.wait({watching}, timeout=5)
    assert watching.cancelled(), "the cancel was swallowed: the caller went on with a watch"
    assert watch not in watcher._active and watch.ended  # and the watch was dropped, not leaked


async def test_stores_closed_at_any_moment_of_their_start_close_promptly(
        etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    """A store is closed at a random moment shortly after it started (while its mirrors' watches are
    being confirmed): every close returns."""
    rng = random.Random(12)
    for _ in range(40):
        client = await EtcdClient.connect(etcd_cluster.endpoints)
        store = EtcdStore(client, prefix, "127.0.0.1:1")
        await store.start()
        await asyncio.sleep(rng.random() * 0.01)
        await asyncio.wait_for(store.close(), 10)
