"""Cluster-wide reads of the stored sessions for ListSessions on a replica (SPEC §6.5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sessiond.store.etcd.ops import prefix_end
from sessiond.store.records import store_pb2

if TYPE_CHECKING:
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["MAX_SCAN", "stored_sessions"]

MAX_SCAN = 10_000
"""Stored sessions one page looks at, at most (as the single process's table)."""
BATCH = 500


async def stored_sessions(store: EtcdStore, keep: Callable[[bytes], bool], *, after: int, limit: int,
                          max_scan: int = MAX_SCAN) -> tuple[list[bytes], int | None]:
    """One page of stored ``Session`` records, oldest placement first (by their key's etcd create
    revision), created after revision ``after``, that ``keep`` accepts; and the revision to continue
    after (None: nothing left). A page may be short, or empty, and still continue: it looks at no
    more than ``max_scan`` records."""
    prefix = store.prefix_of("sessions/")
    page: list[bytes] = []
    scanned = 0
    cursor = after
    while scanned < max_scan:
        batch = min(BATCH, max_scan - scanned)
        reply = await store.client.range(prefix, prefix_end(prefix), limit=batch, min_create_revision=cursor + 1,
                                         by_create_revision=True)
        for kv in reply.kvs:
            scanned += 1
            cursor = kv.create_revision
            record = store_pb2.SessionEntry.FromString(kv.value).record
            if keep(record):
                page.append(record)
                if len(page) == limit:
                    last = kv is reply.kvs[-1]
                    return page, cursor if (reply.more or not last) else None
        if not reply.more:
            return page, None
    return page, cursor
