"""Routing between replicas (SPEC §6.5, distributed.md §3.6): session-scoped calls forwarded to the
replica owning the session's worker, recreates to the token's worker's replica, and WatchSession
of a remote session from the store's watch. (Creates: :mod:`~sessiond.server.cluster.waiters`.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from sessiond.core.errors import (
    NoCapacityError,
    OwnerUnavailableError,
    RecoveringError,
    SessionError,
    SessionNotFoundError,
)
from sessiond.core.model import Viewer
from sessiond.server import auth
from sessiond.store.etcd.errors import EtcdError

if TYPE_CHECKING:
    from sessiond.config import ServerConfig
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["FORWARDED", "OWNER_HINT", "Router"]

WHERE_CACHE = 100_000
"""Sessions whose worker a replica remembers for forwarding (each ≈ 200 bytes)."""
SERVICE = "sessiond.v1.SessionService"
FORWARDED = auth.FORWARDED_BY
"""Metadata on a call one replica forwards to another: the receiver never forwards it again (a
forwarded CreateSession places at once or answers NO_CAPACITY: the sender keeps its place in line)."""
OWNER_HINT = "sessiond-owner"
"""Trailing metadata on an answer a replica gave for a session it does not hold (forwarded, or
OWNER_UNAVAILABLE with the owner known): the address of the replica owning the session's worker.
A client that knows several replicas may send that session's later calls straight there."""
_PASSED_ON = ("authorization", "traceparent", "tracestate")
_TRACE = ("traceparent", "tracestate")

R = TypeVar("R", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _has_reason(error: grpc.aio.AioRpcError) -> bool:
    """Whether the status carries sessiond's ErrorInfo (a real answer, not a transport failure)."""
    return _reason(error) is not None


def _reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of a sessiond answer (None: none, e.g. a transport failure)."""
    pairs = cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in pairs:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with contextlib.suppress(Exception):
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        return str(info.reason)
                return ""
    return None


def _peer_credentials(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for calls to other replicas (None: they serve plaintext). The config has
    already refused TLS without ``peer_tls_ca`` and mTLS without ``peer_tls_cert``."""
    if config.tls_cert is None or config.peer_tls_ca is None:
        return None
    cert = None if config.peer_tls_cert is None else config.peer_tls_cert.read_bytes()
    key = None if config.peer_tls_key is None else config.peer_tls_key.read_bytes()
    return grpc.ssl_channel_credentials(config.peer_tls_ca.read_bytes(), key, cert)


def _visible(session: session_pb2.Session, viewer: Viewer) -> bool:
    return viewer.sees_all or session.principal == viewer.principal


class Router:
    """Where a call for another replica's session or worker goes, and the call itself."""

    def __init__(self, engine: Engine, store: EtcdStore) -> None:
        self.engine = engine
        self.store = store
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._peer = auth.peer_token(engine.config)
        self._tls = _peer_credentials(engine.config)

    def forwarded(self, context: Context) -> bool:
        """Whether this call was forwarded by another replica (then it is served here, never
        forwarded again). With a peer token, only a call the guard found holding it counts: a
        caller's own ``sessiond-forwarded-by`` header is ignored. Without one (no credentials at
        all, the only combination the config allows), every caller is trusted alike."""
        if self._peer is not None:
            return auth.forwarder() is not None
        return any(k == FORWARDED for k, _ in context.invocation_metadata() or ())

    def _channel(self, address: str) -> grpc.aio.Channel:
        """The channel to another replica: TLS (with a client certificate under mTLS) when the
        replicas serve TLS, else plaintext; one per replica, reused."""
        channel = self._channels.get(address)
        if channel is None:
            channel = (grpc.aio.insecure_channel(address) if self._tls is None
                       else grpc.aio.secure_channel(address, self._tls))
            self._channels[address] = channel
        return channel

    def _metadata(self, context: Context) -> list[tuple[str, str]]:
        """What a forwarded call carries: the peer token and the caller this replica authenticated
        (with a peer token), else the caller's own credential; the trace context; the forwarder."""
        if self._peer is not None:
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                        if k in _TRACE and isinstance(v, str)]
            metadata.append(("authorization", f"Bearer {self._peer}"))
            metadata.extend(auth.forwarded_for(auth.current()))
        else:
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                        if k in _PASSED_ON and isinstance(v, str)]
        metadata.append((FORWARDED, self.store.replica_id))
        return metadata

    async def forward(self, method: str, request: Message, context: Context, session_id: str,
                      response_type: type[R]) -> R | session_pb2.Session:
        """Serve a session-scoped call for a session this replica does not hold: forward it to the
        replica owning the session's worker, with the caller's credentials and remaining deadline.
        Returns that replica's answer, or the stored session when no replica holds it and the stored
        version answers the call (GetSessionInfo; CompleteSession of a terminal session).

        Raises:
            SessionNotFoundError: the store has no such session.
            OwnerUnavailableError: the owner cannot be reached, or the worker is moving (retry).
            RecoveringError: the owner's replica could not be connected to: nothing was sent (retry).
        """
        forwarded = self.forwarded(context)
        worker = self._where.get(session_id)
        if worker is not None and not forwarded:
            address = self._address_of(worker)
            if address is not None:  # a session never changes worker: no store read on this path
                try:
                    return await self.call(address, method, request, context, response_type)
                except (OwnerUnavailableError, RecoveringError):
                    if method != "GetSessionInfo":
                        raise
                    # The owner is unreachable (dead, its lease not expired yet): the store answers.
                    worker = None
        found = await self.read(session_id)
        if found is None:
            raise SessionNotFoundError(session_id)
        session, _ = found
        self._remember(session_id, (session.task_queue, session.worker.worker_id))
        terminal = session.state != session_pb2.SESSION_STATE_OPEN
        address = self.owner_address(session)
        if not _visible(session, auth.current().viewer):
            raise SessionNotFoundError(session_id)
        if address is None or forwarded:
            if method == "GetSessionInfo" or (terminal and method == "CompleteSession"):
                return session
            # Nothing was sent: the call is safe to repeat, an activity included (RECOVERING).
            raise RecoveringError(
                f"session {session_id!r}: its worker is not connected to any replica now (moving?); nothing was "
                "sent: retry", metadata={"session_id": session_id})
        try:
            return await self.call(address, method, request, context, response_type)
        except (OwnerUnavailableError, RecoveringError):
            if method == "GetSessionInfo":
                return session  # as stored: the owner is unreachable
            raise

    async def call(self, address: str, method: str, request: Message, context: Context,
                   response_type: type[R], *, no_room_raises: bool = False) -> R:
        """Call ``method`` of another replica's SessionService on the caller's behalf (its error
        answers become the caller's; with ``no_room_raises``, NO_CAPACITY raises NoCapacityError)."""
        stub = self._channel(address).unary_unary(f"/{SERVICE}/{method}", request_serializer=_serialize,
                                                  response_deserializer=response_type.FromString)
        hint = (OWNER_HINT, address)
        try:
            answer = cast("R", await stub(request, timeout=context.time_remaining(),
                                          metadata=self._metadata(context)))
            context.set_trailing_metadata((hint,))
            return answer
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and not _has_reason(error) \
                    and "failed to connect" in (error.details() or ""):
                # The channel never reached the replica (it stopped, or restarts): nothing was sent.
                # A channel that failed to connect backs off its reconnects (up to minutes): a fresh
                # one reaches a restarted replica at once.
                self._drop_channel(address)
                raise RecoveringError(
                    f"the replica owning the session ({address}) is not reachable (restarting? its worker then "
                    "moves to another replica); nothing was sent: retry", metadata={"owner_address": address}) from None
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) \
                    and not _has_reason(error):
                raise OwnerUnavailableError(
                    f"the replica owning the session ({address}) did not answer: {error.details()}; retry "
                    "(an activity's outcome is unknown)", metadata={"owner_address": address}) from None
            if no_room_raises and _reason(error) == NoCapacityError.reason:
                raise NoCapacityError(error.details() or "no room") from None
            # grpc wants a plain tuple of pairs here (an aio Metadata is refused).
            trailing = (*cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ()), hint)
            await context.abort(error.code(), error.details() or "", trailing)
            raise  # abort raises; this line satisfies the type checker

    async def watch_remote(self, session_id: str, viewer: Viewer,
                           context: Context) -> AsyncIterator[session_pb2.Session]:
        """WatchSession of a session another replica holds: the stored version, then the owner's
        own WatchSession, forwarded (so the watch attends the session there, as a local one does:
        no CALLER_LOST while it lasts). When the owner stops answering (killed, fenced) the watch
        goes on at the worker's next owner; while no replica owns the worker (moving), or on a
        forwarded watch, it follows the store's watch (which does not attend). It yields only
        versions that differ from the last one and ends after the terminal state."""
        found = await self.read(session_id)
        if found is None:
            raise SessionNotFoundError(session_id)
        session, revision = found
        if not _visible(session, viewer):
            raise SessionNotFoundError(session_id)
        yield session
        last = session
        forwarded = self.forwarded(context)
        while last.state == session_pb2.SESSION_STATE_OPEN:
            address = None if forwarded else self.owner_address(last)
            if address is None:
                async for stored in self._follow(session_id, revision):
                    if stored != last:
                        yield stored
                    last = stored
                return
            async for owned in self._watch_at(address, session_id, context):
                if owned != last:
                    yield owned
                last = owned
            if last.state != session_pb2.SESSION_STATE_OPEN:
                return
            # The owner's stream broke off: see where the session is now, then watch there.
            found = await self.read(session_id)
            if found is None:
                raise SessionNotFoundError(session_id)
            session, revision = found
            if session != last:
                yield session
            last = session
            if self.owner_address(last) == address:
                # The store still names the silent replica (its lease not expired yet): follow
                # the store until the session ends (a new owner's events reach it too).
                forwarded = True

    async def _watch_at(self, address: str, session_id: str, context: Context,
                        ) -> AsyncIterator[session_pb2.Session]:
        """The owner's WatchSession stream, forwarded; ends quietly when the owner stops answering
        (a real answer, e.g. NOT_FOUND, is passed on to the caller)."""
        stub = self._channel(address).unary_stream(
            f"/{SERVICE}/WatchSession", request_serializer=_serialize,
            response_deserializer=session_service_pb2.WatchSessionResponse.FromString)
        call = stub(session_service_pb2.WatchSessionRequest(session_id=session_id),
                    timeout=context.time_remaining(), metadata=self._metadata(context))
        try:
            async for response in call:
                yield cast("session_service_pb2.WatchSessionResponse", response).session
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) \
                    and not _has_reason(error):
                return
            trailing = tuple(cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ()))
            await context.abort(error.code(), error.details() or "", trailing)
        finally:
            call.cancel()

    async def _follow(self, session_id: str, revision: int) -> AsyncIterator[session_pb2.Session]:
        """Every version of a session the store records after ``revision``, up to its terminal one."""
        try:
            async for stored in self.store.watch_session(session_id, revision):
                session = session_pb2.Session.FromString(stored.record)
                yield session
                if session.state != session_pb2.SESSION_STATE_OPEN:
                    return
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); resubscribe") from None

    async def read(self, session_id: str) -> tuple[session_pb2.Session, int] | None:
        """A session as the store has it (any replica's), and the revision of that version."""
        try:
            stored = await self.store.read_session(session_id)
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
        if stored is None:
            return None
        return session_pb2.Session.FromString(stored.record), stored.revision

    def owner_address(self, session: session_pb2.Session) -> str | None:
        """The address of the live replica owning the session's worker (None: none, or this one)."""
        return self._address_of((session.task_queue, session.worker.worker_id))

    def _address_of(self, worker: tuple[str, str]) -> str | None:
        owner = self.store.owner_of(worker)
        if owner is None or owner == self.store.replica_id:
            return None
        return self.store.replica_address(owner)

    def _remember(self, session_id: str, worker: tuple[str, str]) -> None:
        """Which worker a session is on (bounded, least recently used out first)."""
        self._where[session_id] = worker
        self._where.move_to_end(session_id)
        if len(self._where) > WHERE_CACHE:
            self._where.popitem(last=False)

    def recreate_target(self, token: bytes, context: Context) -> str | None:
        """Where a recreate goes: the live replica owning the token's worker when that is not this
        one (None: handle it here, including a worker connected nowhere, which it waits for)."""
        try:
            worker = self.engine.signer.target(token, self.engine.now()).worker
        except SessionError:
            return None
        if worker in self.engine._connections or self.forwarded(context):
            return None
        return self._address_of((worker.task_queue, worker.worker_id))

    def _drop_channel(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            task = self._loop.create_task(channel.close(None))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the channels to other replicas."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
