"""The lease guard: a replica fences itself before its lease can expire (distributed.md §3.5).

etcd never expires a lease early, so the replica may act as an owner until ``send time of the last
acknowledged renewal + TTL - margin``. Past that (or when etcd says the lease is gone) the guard
calls ``fence`` with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdError
from sessiond.store.etcd.lease import Lease

__all__ = ["SELF_FENCE_MARGIN", "guard_lease"]

SELF_FENCE_MARGIN = 1.0
"""Seconds before the lease could expire at which the replica stops acting as an owner."""


async def guard_lease(client: EtcdClient, lease: Lease, fence: Callable[[str], None]) -> None:
    """Fence this replica before its lease can expire (or when etcd says it is gone)."""
    loop = asyncio.get_running_loop()
    lost = asyncio.ensure_future(lease.wait_lost())
    try:
        while True:
            remaining = lease.deadline - SELF_FENCE_MARGIN - loop.time()
            if remaining <= 0 and not await _lease_confirmed(client, lease):
                fence("lease renewals stopped: fencing before it can expire")
                return
            remaining = max(lease.deadline - SELF_FENCE_MARGIN - loop.time(), 0.01)
            await asyncio.wait({lost}, timeout=remaining)
            if lost.done():
                fence(lost.result())
                return
    finally:
        lost.cancel()


async def _lease_confirmed(client: EtcdClient, lease: Lease) -> bool:
    """Ask etcd directly, within part of the margin, whether the lease still lives: after a
    stall of this process the keepalive answers may be unread, and fencing would be needless.
    etcd never expires a lease before the TTL it reports has run from its answer, so the send
    time plus that TTL is a safe new deadline."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        reply = await client.lease_time_to_live(lease.id, timeout=SELF_FENCE_MARGIN / 2)
    except EtcdError:
        return False
    if reply.ttl <= 0 or loop.time() - sent >= SELF_FENCE_MARGIN / 2:
        return False
    lease.deadline = max(lease.deadline, sent + reply.ttl)
    return lease.deadline - SELF_FENCE_MARGIN > loop.time()
