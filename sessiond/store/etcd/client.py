"""A thin grpc.aio client for the part of etcd's v3 API sessiond needs.

One channel per member; every call goes to the *current* member while its channel is READY, and
moves to the next READY one when a call to it fails (a killed member's channel drops out at once;
a frozen one is left after its first timeout and avoided for ``penalty`` seconds). Reads retry on
another member within their deadline; writes never retry (see :mod:`.errors`). The lease keeper
(:mod:`.lease`) and the watcher (:mod:`.watch`) each hold ONE stream, opened on the current member
and reopened on the next one when it breaks.

Every call carries ``hasleader: true``: a member cut off from the leader refuses it at once
(UNAVAILABLE) and ends its streams, instead of serving a stale watch or holding a request until
its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.api import v3_subset_pb2_grpc as rpc
from sessiond.store.etcd.errors import (
    EtcdAuthError,
    EtcdClosedError,
    EtcdError,
    EtcdUnavailableError,
    from_rpc_error,
)
from sessiond.store.etcd.lease import Lease, LeaseKeeper
from sessiond.store.etcd.ops import prefix_end
from sessiond.store.etcd.watch import Watch, Watcher

__all__ = ["EtcdAuth", "EtcdClient", "EtcdTLS", "Member"]

log = logging.getLogger("sessiond.store.etcd")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Reconnect fast (a restarted member is usable again within ~0.1-1 s). Keepalive pings (10 s, gRPC's
# floor; etcd refuses pings closer than 5 s) only clean up dead connections: a frozen member is
# detected by the streams themselves (unanswered renewals, unanswered watch progress requests) and
# by call deadlines, which is faster and does not depend on gRPC's ping policy.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to the members: the CA that signed their certificates, and a client certificate if they ask."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None  # the name to check in the members' certificates, if not the endpoint's host

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key go together")


@dataclass(frozen=True)
class EtcdAuth:
    """An etcd user: the client logs in with Authenticate and sends the token with every call."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"EtcdAuth(user={self.user!r}, password=***)"


class Member:
    """One endpoint: its channel, its stubs, and when a call to it last failed."""

    __slots__ = ("auth", "channel", "endpoint", "failed_at", "index", "kv", "lease", "maintenance", "watch")

    def __init__(self, index: int, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.index = index
        self.endpoint = endpoint
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.failed_at = float("-inf")


def _token_rejected(error: grpc.aio.AioRpcError) -> bool:
    """etcd refused the token (expired, or issued before an auth change): log in again and retry."""
    details = error.details() or ""
    return (error.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in details) or (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT and "revision of auth store is old" in details
    )


class EtcdClient:
    """A client of one etcd cluster. Create it with :meth:`connect`; close it with :meth:`close`.

    Args:
        endpoints: ``host:port`` of each member (any subset of the cluster works).
        tls: TLS settings; None = plaintext.
        auth: user and password; None = no authentication.
        request_timeout: the deadline of a call that does not give its own, in seconds.
        attempt_timeout: how long one *read* attempt may take before it is retried on another member.
        penalty: how long a member whose call failed is avoided while another one is READY, in seconds.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: EtcdTLS | None = None,
        auth: EtcdAuth | None = None,
        request_timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        penalty: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        options = list(CHANNEL_OPTIONS)
        credentials = None
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.members = [
            Member(i, ep, grpc.aio.secure_channel(ep, credentials, options) if credentials
                   else grpc.aio.insecure_channel(ep, options))
            for i, ep in enumerate(endpoints)
        ]
        self._auth = auth
        self._request_timeout = request_timeout
        self._attempt_timeout = attempt_timeout
        self._penalty = penalty
        self._current = 0
        self._metadata: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
        self._auth_lock = asyncio.Lock()
        self._closed = False
        self._keeper: LeaseKeeper | None = None
        self._watcher: Watcher | None = None
        self.on_stream_failed: list[Callable[[str], None]] = []
        """Called with the reason when the keepalive or watch stream's task died (a bug, logged at
        ERROR): leases then go unrenewed, or watches end. An etcd store fences its replica."""
        self.stream_failure: str | None = None
        """Why the first stream task died (None: none did). Later deaths are not reported again."""

    @classmethod
    async def connect(cls, endpoints: Sequence[str], *, timeout: float = 5.0, **kwargs: Any) -> EtcdClient:
        """A client whose first member answered (and whose user logged in) within ``timeout`` seconds.

        Raises:
            EtcdUnavailableError: no member became reachable in time.
            EtcdAuthError: the user or password was refused.
        """
        client = cls(endpoints, **kwargs)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            if client._auth is not None:
                await client._authenticate(deadline, stale=None)
            else:
                await client.ready_member(deadline)
        except BaseException:
            await client.close()
            raise
        return client

    # ------------------------------------------------------------------ members and calls

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call sends (the leader requirement, and the auth token when logged in)."""
        return self._metadata

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def stream_failed(self, reason: str) -> None:
        """The keepalive or watch stream's task died: tell the ``on_stream_failed`` callbacks (once)."""
        if self.stream_failure is not None:
            return
        self.stream_failure = reason
        for callback in list(self.on_stream_failed):
            callback(reason)

    def stream_end_expected(self) -> bool:
        """Whether the end of a stream task now is not to be reported: the client closed, or one
        stream already failed (a bug that kills a restarted stream again is one incident)."""
        return self._closed or self.stream_failure is not None

    async def ready_member(self, deadline: float) -> Member:
        """The current member if its channel is READY, else the next READY one (waiting until ``deadline``).

        A member whose call failed within ``penalty`` seconds is used only when no other is READY.
        """
        loop = asyncio.get_running_loop()
        count = len(self.members)
        while True:
            if self._closed:
                raise EtcdClosedError("etcd client closed")
            now = loop.time()
            chosen: Member | None = None
            for step in range(count):
                member = self.members[(self._current + step) % count]
                if member.channel.get_state(try_to_connect=True) is not grpc.ChannelConnectivity.READY:
                    continue
                if now - member.failed_at >= self._penalty:
                    chosen = member
                    break
                chosen = chosen or member
            if chosen is not None:
                self._current = chosen.index
                return chosen
            if now >= deadline:
                where = ", ".join(m.endpoint for m in self.members)
                raise EtcdUnavailableError(f"etcd: no member reachable at {where}")
            # Nothing is connected (start-up, or every member down): poll the channels' states. Only
            # this path polls; a READY member is found without waiting.
            await asyncio.sleep(min(0.02, deadline - now))

    def member_failed(self, member: Member) -> None:
        """Record that a call to ``member`` failed: later calls prefer the other members for a while."""
        member.failed_at = asyncio.get_running_loop().time()
        if self._current == member.index:
            self._current = (member.index + 1) % len(self.members)

    async def _call(
        self,
        method: Callable[[Member], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
        timeout: float | None,
        *,
        write: bool,
    ) -> Resp:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._request_timeout if timeout is None else timeout)
        logged_in_again = False
        while True:
            member = await self.ready_member(deadline)
            remaining = deadline - loop.time()
            attempt = remaining if write else min(remaining, self._attempt_timeout)
            try:
                return await method(member)(request, timeout=max(attempt, 0.001), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if self._auth is not None and not logged_in_again and _token_rejected(exc):
                    # etcd checks the token before doing anything: the call was not applied.
                    logged_in_again = True
                    await self._authenticate(deadline, stale=self._metadata)
                    continue
                error = from_rpc_error(exc, write=write)
                if isinstance(error, EtcdUnavailableError):
                    self.member_failed(member)
                    if not write and loop.time() < deadline:
                        continue  # a read is safe to repeat on another member
                raise error from None

    async def _authenticate(self, deadline: float, stale: tuple[tuple[str, str], ...] | None) -> None:
        """Log in and put the token in the call metadata. Concurrent callers that saw the same
        rejected token share one login."""
        assert self._auth is not None
        async with self._auth_lock:
            if stale is not None and self._metadata is not stale:
                return  # another caller already logged in again
            loop = asyncio.get_running_loop()
            request = pb.AuthenticateRequest(name=self._auth.user, password=self._auth.password)
            while True:
                member = await self.ready_member(deadline)
                try:
                    reply = await member.auth.Authenticate(
                        request, timeout=max(deadline - loop.time(), 0.001), metadata=(("hasleader", "true"),))
                    break
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc, write=False)
                    if isinstance(error, EtcdUnavailableError) and loop.time() < deadline:
                        self.member_failed(member)
                        continue
                    if isinstance(error, EtcdAuthError):
                        raise EtcdAuthError(f"etcd refused user {self._auth.user!r}: {exc.details()}", exc.code()) \
                            from None
                    raise error from None
            self._metadata = (("hasleader", "true"), ("token", reply.token))

    async def keep_stream(self, name: str, session: Callable[[Member], Awaitable[None]],
                          answered: Callable[[], int], ended: Callable[[], None]) -> None:
        """Keep one stream open until the client closes: run ``session`` on the current member, and
        when it ends (or fails) call ``ended`` and run it again on the next one.

        ``answered`` counts the streams that got an answer: while streams keep failing before any
        answer, the pause between attempts doubles up to 1 s; after an answered one it starts at 50 ms.
        """
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            try:
                member = await self.ready_member(loop.time() + 1.0)
            except EtcdClosedError:
                return
            except EtcdError:
                continue  # nothing reachable yet (ready_member waited): keep trying
            before = answered()
            try:
                await session(member)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.info("etcd %s stream to %s ended: %s %s", name, member.endpoint, exc.code().name, exc.details())
                if self._auth is not None and _token_rejected(exc):
                    await self._authenticate(loop.time() + self._request_timeout, stale=self._metadata)
            except (EtcdError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                log.info("etcd %s stream to %s ended: %s", name, member.endpoint, exc)
            finally:
                ended()
            if self._closed:
                return
            self.member_failed(member)
            backoff = 0.05 if answered() != before else min(backoff * 2, 1.0)
            await asyncio.sleep(backoff)

    # ------------------------------------------------------------------ KV

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        min_create_revision: int = 0,
        by_create_revision: bool = False,
        timeout: float | None = None,
    ) -> pb.RangeResponse:
        """Read [key, range_end) (one key when range_end is empty), linearizably unless ``serializable``.

        ``response.header.revision`` is the revision the read saw: watch from it + 1 to miss nothing.
        ``by_create_revision`` sorts the keys oldest created first (``limit`` then applies after the
        sort, and ``response.more`` says whether keys were left out); ``min_create_revision`` keeps
        keys created at or after that revision.

        Raises:
            EtcdCompactedError: ``revision`` was compacted.
        """
        request = pb.RangeRequest(key=key, range_end=range_end, revision=revision, limit=limit,
                                  keys_only=keys_only, count_only=count_only, serializable=serializable,
                                  min_create_revision=min_create_revision)
        if by_create_revision:
            request.sort_order = pb.RangeRequest.SORT_ORDER_ASCEND
            request.sort_target = pb.RangeRequest.SORT_TARGET_CREATE
        return await self._call(lambda m: m.kv.Range, request, timeout, write=False)

    async def get(self, key: bytes, *, timeout: float | None = None) -> pb.KeyValue | None:
        """The key, or None when it is absent."""
        reply = await self.range(key, timeout=timeout)
        return reply.kvs[0] if reply.kvs else None

    async def get_prefix(self, prefix: bytes, *, keys_only: bool = False,
                         timeout: float | None = None) -> pb.RangeResponse:
        """Every key that starts with ``prefix``, in key order."""
        return await self.range(prefix, prefix_end(prefix), keys_only=keys_only, timeout=timeout)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False,
                  timeout: float | None = None) -> pb.PutResponse:
        """Write a key; ``response.header.revision`` is the revision the write created.

        Raises:
            EtcdOutcomeUnknownError: it may or may not have been applied.
        """
        request = pb.PutRequest(key=key, value=value, lease=lease, prev_kv=prev_kv)
        return await self._call(lambda m: m.kv.Put, request, timeout, write=True)

    async def delete(self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False,
                     timeout: float | None = None) -> pb.DeleteRangeResponse:
        """Delete a key (or [key, range_end)); ``response.deleted`` says how many."""
        request = pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv)
        return await self._call(lambda m: m.kv.DeleteRange, request, timeout, write=True)

    async def txn(
        self,
        compare: Sequence[pb.Compare],
        success: Sequence[pb.RequestOp] = (),
        failure: Sequence[pb.RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> pb.TxnResponse:
        """If every compare holds, apply ``success``, else ``failure``, as one revision.

        ``response.succeeded`` says which branch ran; ``response.responses`` holds its results (put
        the reads that explain a failed compare in ``failure``).

        Raises:
            EtcdOutcomeUnknownError: it may or may not have been applied (never retried here).
        """
        request = pb.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(lambda m: m.kv.Txn, request, timeout, write=True)

    async def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        """Discard the history before ``revision`` (watches that need it will report compaction)."""
        request = pb.CompactRequest(revision=revision, physical=physical)
        await self._call(lambda m: m.kv.Compact, request, timeout, write=True)

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl: int, *, keep_alive: bool = True, timeout: float | None = None) -> Lease:
        """Grant a lease of ``ttl`` seconds (etcd may raise it to its minimum, 2 s by default).

        With ``keep_alive`` it is renewed every third of its TTL on the client's one keepalive stream
        until :meth:`revoke_lease` or :meth:`LeaseKeeper.forget`.
        """
        loop = asyncio.get_running_loop()
        sent = loop.time()
        reply = await self._call(lambda m: m.lease.LeaseGrant, pb.LeaseGrantRequest(ttl=ttl), timeout, write=True)
        if reply.error:
            raise EtcdError(f"etcd: lease grant failed: {reply.error}")
        lease = Lease(reply.id, reply.ttl, deadline=sent + reply.ttl)
        if keep_alive:
            self.keeper.keep(lease)
        return lease

    async def revoke_lease(self, lease: Lease | int, *, timeout: float | None = None) -> None:
        """Stop renewing a lease and revoke it (its keys are deleted at once).

        Raises:
            LeaseNotFoundError: it no longer exists.
        """
        lease_id = lease.id if isinstance(lease, Lease) else lease
        if self._keeper is not None:
            self._keeper.forget(lease_id)
        await self._call(lambda m: m.lease.LeaseRevoke, pb.LeaseRevokeRequest(id=lease_id), timeout, write=True)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> pb.LeaseTimeToLiveResponse:
        """etcd's view of a lease: ``ttl`` is -1 when it does not exist."""
        request = pb.LeaseTimeToLiveRequest(id=lease_id, keys=keys)
        return await self._call(lambda m: m.lease.LeaseTimeToLive, request, timeout, write=False)

    @property
    def keeper(self) -> LeaseKeeper:
        """The lease keeper: one LeaseKeepAlive stream renews every kept lease."""
        if self._closed:
            raise EtcdClosedError("etcd client closed")
        if self._keeper is None:
            self._keeper = LeaseKeeper(self)
        return self._keeper

    # ------------------------------------------------------------------ watches

    async def watch(self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0,
                    prev_kv: bool = False, max_pending: int = 1024, timeout: float | None = None) -> Watch:
        """Watch [key, range_end) from ``start_revision`` (inclusive; 0 = from now) on the one watch stream.

        Returns once etcd confirmed the watch. Iterate the :class:`Watch` for batches of events. A
        ``start_revision`` etcd has compacted raises :class:`EtcdCompactedError`, from here or (as
        etcd reports it after confirming the watch) from the first iteration.
        """
        return await self.watcher.watch(key, range_end, start_revision=start_revision, prev_kv=prev_kv,
                                         max_pending=max_pending,
                                         timeout=self._request_timeout if timeout is None else timeout)

    @property
    def watcher(self) -> Watcher:
        """The watcher: one Watch stream carries every watch."""
        if self._closed:
            raise EtcdClosedError("etcd client closed")
        if self._watcher is None:
            self._watcher = Watcher(self)
        return self._watcher

    # ------------------------------------------------------------------ maintenance

    async def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> pb.StatusResponse:
        """The Status of one member: the given endpoint, or the current member."""
        wait = self._request_timeout if timeout is None else timeout
        if endpoint is None:
            return await self._call(lambda m: m.maintenance.Status, pb.StatusRequest(), timeout, write=False)
        member = next((m for m in self.members if m.endpoint == endpoint), None)
        if member is None:
            raise ValueError(f"{endpoint} is not one of this client's endpoints")
        try:
            # No leader requirement: Status must answer on a member that has lost its leader.
            metadata = tuple(entry for entry in self._metadata if entry[0] != "hasleader")
            return await member.maintenance.Status(pb.StatusRequest(), timeout=wait, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, write=False) from None

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Stop the keepalive and watch streams (leases are not revoked) and close the channels."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            await self._keeper.close()
        if self._watcher is not None:
            await self._watcher.close()
        await asyncio.gather(*(m.channel.close(None) for m in self.members), return_exceptions=True)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
