"""Leases, and the keeper that renews all of them on ONE LeaseKeepAlive stream.

etcd lets one stream renew any number of leases (one request per renewal, answered in order), so a
replica with many leases costs one stream, not one per lease. Each kept lease is renewed every third
of its TTL. The keeper reopens the stream on another member when it breaks, and also when a renewal
goes unanswered for a third of the TTL (at least 1 s): a frozen member keeps its TCP connection
open and would otherwise let every lease run out.

``Lease.deadline`` is the conservative end of a lease as this process can know it: the *send* time
of the last renewal etcd answered plus the TTL it granted. etcd never expires a lease early, so
before ``deadline`` the lease certainly exists; past it, a holder must act as if it were gone
(distributed.md §3.5 "self-fencing").
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from typing import TYPE_CHECKING

import grpc

from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.errors import EtcdClosedError, EtcdError
from sessiond.supervise import stop, supervise

if TYPE_CHECKING:
    from sessiond.store.etcd.client import EtcdClient, Member

__all__ = ["Lease", "LeaseKeeper"]

log = logging.getLogger("sessiond.store.etcd")

MIN_STALL = 1.0  # seconds an unanswered renewal may take before the stream is presumed stuck


class Lease:
    """A granted lease as this client knows it. ``deadline`` is on the event loop's clock."""

    __slots__ = ("_lost", "deadline", "due", "id", "lost_reason", "renewals", "ttl")

    def __init__(self, lease_id: int, ttl: int, deadline: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.deadline = deadline
        self.renewals = 0
        self.due = 0.0  # when the keeper renews it next
        self.lost_reason: str | None = None
        self._lost = asyncio.Event()

    @property
    def lost(self) -> bool:
        """True once etcd said the lease is gone (expired or revoked elsewhere)."""
        return self._lost.is_set()

    async def wait_lost(self) -> str:
        """Wait until etcd says the lease is gone; return why."""
        await self._lost.wait()
        assert self.lost_reason is not None
        return self.lost_reason

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    def __repr__(self) -> str:
        return f"Lease(id={self.id:#x}, ttl={self.ttl}, renewals={self.renewals}, lost={self.lost})"


class LeaseKeeper:
    """Renews every kept lease on one LeaseKeepAlive stream (owned by an :class:`EtcdClient`)."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._leases: dict[int, Lease] = {}
        self._due: list[tuple[float, int]] = []  # (due time, lease id); an entry is stale if lease.due moved
        self._sent: dict[int, float] = {}  # lease id -> send time of its unanswered renewal (oldest first)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.streams_opened = 0  # streams that answered at least once (1 while nothing broke)
        self.endpoint: str | None = None  # the member the current stream is open to

    @property
    def leases(self) -> list[Lease]:
        """The leases being kept."""
        return list(self._leases.values())

    def keep(self, lease: Lease) -> None:
        """Renew ``lease`` every third of its TTL from now on."""
        if self._client.closed:
            raise EtcdClosedError("etcd client closed")
        self._leases[lease.id] = lease
        self._schedule(lease, asyncio.get_running_loop().time() + lease.ttl / 3)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="etcd-lease-keepalive")
            supervise(self._task, stopping=self._client.stream_end_expected, fail=self._client.stream_failed, log=log)

    def forget(self, lease_id: int) -> None:
        """Stop renewing a lease (it then expires after its TTL unless revoked)."""
        self._leases.pop(lease_id, None)
        self._sent.pop(lease_id, None)

    async def close(self) -> None:
        """Stop the stream. Leases are not revoked."""
        await stop(self._task)

    def _schedule(self, lease: Lease, when: float) -> None:
        lease.due = when
        heapq.heappush(self._due, (when, lease.id))
        self._wake.set()

    async def _run(self) -> None:
        await self._client.keep_stream("keepalive", self._stream, lambda: self.streams_opened, self._stream_ended)

    def _stream_ended(self) -> None:
        # Every renewal in flight is lost with the stream: renew everything at once on the next one.
        self._sent.clear()
        now = asyncio.get_running_loop().time()
        for lease in self._leases.values():
            self._schedule(lease, now)

    async def _stream(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        call = member.lease.LeaseKeepAlive(None, metadata=self._client.metadata)
        self.endpoint = member.endpoint
        reader = asyncio.create_task(self._read(call), name="etcd-lease-keepalive-read")
        try:
            while True:
                now = loop.time()
                if self._sent:
                    oldest_id, oldest_sent = next(iter(self._sent.items()))
                    lease = self._leases.get(oldest_id)
                    if lease is not None and now - oldest_sent > max(MIN_STALL, lease.ttl / 3):
                        raise EtcdError(f"no keepalive answer from {member.endpoint} for {now - oldest_sent:.1f} s")
                while self._due and self._due[0][0] <= now:
                    due, lease_id = heapq.heappop(self._due)
                    lease = self._leases.get(lease_id)
                    if lease is None or lease.due != due:
                        continue  # forgotten, or rescheduled since
                    if lease_id in self._sent:
                        self._schedule(lease, now + lease.ttl / 3)
                        continue  # still waiting for the previous answer
                    self._sent[lease_id] = now
                    self._schedule(lease, now + lease.ttl / 3)
                    await call.write(pb.LeaseKeepAliveRequest(id=lease_id))
                wake_at = self._due[0][0] if self._due else now + 60.0
                if self._sent:
                    oldest_id, oldest_sent = next(iter(self._sent.items()))
                    lease = self._leases.get(oldest_id)
                    wake_at = min(wake_at, oldest_sent + max(MIN_STALL, lease.ttl / 3 if lease else 0) + 0.01)
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter, reader}, timeout=max(wake_at - loop.time(), 0),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if reader.done():
                    reader.result()  # raises what ended the stream
                    raise EtcdError("keepalive stream ended")
        finally:
            self.endpoint = None
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, call: grpc.aio.StreamStreamCall[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) \
            -> None:
        counted = False
        while True:
            reply = await call.read()
            if not isinstance(reply, pb.LeaseKeepAliveResponse):
                return  # EOF: the member ended the stream
            if not counted:
                counted = True
                self.streams_opened += 1  # counted once the stream answered: it really was open
            sent_at = self._sent.pop(reply.id, None)
            lease = self._leases.get(reply.id)
            if lease is None or sent_at is None:
                continue
            if reply.ttl <= 0:
                self.forget(reply.id)
                lease._mark_lost("etcd: lease not found (expired or revoked)")
                continue
            lease.ttl = reply.ttl
            lease.deadline = sent_at + reply.ttl
            lease.renewals += 1
