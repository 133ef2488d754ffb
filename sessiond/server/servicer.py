"""The sessiond.v1.SessionService servicer: validate, convert, call the engine, convert back.

Every method runs as the principal the authentication guard found (:func:`sessiond.server.auth.current`):
sessions are created for it, and it sees what its :class:`~sessiond.core.model.Viewer` lets it see.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc, worker_pb2

from sessiond.core.errors import NoCapacityError, OwnerUnavailableError, SessionNotFoundError
from sessiond.core.model import Session
from sessiond.server import auth, validate
from sessiond.server.engine import Engine
from sessiond.server.errors import PlacedElsewhereError, rpc, rpc_stream
from sessiond.server.worker_stream import serve_worker
from sessiond.store.base import Outcome
from sessiond.telemetry import tracing

Context = grpc.aio.ServicerContext[Any, Any]

# Leave this much of the caller's RPC deadline to deliver a CREATION_TIMEOUT answer in time.
_DEADLINE_MARGIN = 0.05


def _max_wait(context: Context) -> float | None:
    """creation_timeout is also bounded by the RPC deadline: answer before the caller gives up.

    Only the wait is capped; the session records the creation_timeout it was asked for.
    """
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - _DEADLINE_MARGIN)


def _annotate(session_id: str, task_queue: str, worker_id: str) -> None:
    tracing.annotate(session_id=session_id, task_queue=task_queue, worker_id=worker_id)


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """Thin transport glue over :class:`~sessiond.server.engine.Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._host = os.uname().nodename

    @rpc
    async def CreateSession(self, request: session_service_pb2.CreateSessionRequest,
                            context: Context) -> session_service_pb2.CreateSessionResponse:
        task_queue = validate.name(request.task_queue, "task_queue", required=True)
        options = validate.options(request.options, request.HasField("options"), self.engine.config)
        demand = validate.demand(request.options.resources)
        selector = validate.selector(request.options.selector)
        owner = validate.name(request.owner, "owner", required=False)
        request_id = validate.name(request.request_id, "request_id", required=False)
        principal = auth.current().name

        async def place(max_wait: float | None) -> session_service_pb2.CreateSessionResponse:
            return session_service_pb2.CreateSessionResponse(session=await self._placed(self.engine.create_session(
                task_queue, options, max_wait=max_wait, owner=owner, request_id=request_id, demand=demand,
                selector=selector, principal=principal)))

        cluster = self.engine.cluster
        if cluster is None:
            return await place(_max_wait(context))
        if cluster.routes.forwarded(context):
            if self.engine.draining:  # the forwarding replica tries the next one
                raise NoCapacityError("this replica is draining before a restart: it places no new sessions")
            return await place(0.0)  # another replica holds this create's place in line: now or NO_CAPACITY
        capped = _max_wait(context)
        return await cluster.admission.create(
            task_queue, options.creation_timeout if capped is None else min(options.creation_timeout, capped),
            lambda: place(0.0),
            lambda address: cluster.routes.call(address, "CreateSession", request, context,
                                                session_service_pb2.CreateSessionResponse, no_room_raises=True))

    @rpc
    async def RecreateSession(self, request: session_service_pb2.RecreateSessionRequest,
                              context: Context) -> session_service_pb2.RecreateSessionResponse:
        token = validate.token(request.recreate_token)
        options = validate.options(request.options, request.HasField("options"), self.engine.config)
        validate.no_selector(request.options.selector)
        demand = validate.demand(request.options.resources)
        cluster = self.engine.cluster
        if cluster is not None:
            elsewhere = cluster.routes.recreate_target(token, context)
            if elsewhere is not None:  # the token's worker is connected to another replica
                return await cluster.routes.call(elsewhere, "RecreateSession", request, context,
                                                 session_service_pb2.RecreateSessionResponse)
        return session_service_pb2.RecreateSessionResponse(session=await self._placed(self.engine.recreate_session(
            token, options, max_wait=_max_wait(context),
            owner=validate.name(request.owner, "owner", required=False),
            request_id=validate.name(request.request_id, "request_id", required=False),
            demand=demand, principal=auth.current().name,
        )))

    @rpc
    async def CompleteSession(self, request: session_service_pb2.CompleteSessionRequest,
                              context: Context) -> session_service_pb2.CompleteSessionResponse:
        session_id = validate.name(request.session_id, "session_id", required=True)
        cluster = self.engine.cluster
        try:
            session = self.engine.complete_session(session_id, auth.current().viewer)
        except SessionNotFoundError:
            if cluster is None:
                raise
            answer = await cluster.routes.forward("CompleteSession", request, context, session_id,
                                                  session_service_pb2.CompleteSessionResponse)
            if isinstance(answer, session_pb2.Session):
                return session_service_pb2.CompleteSessionResponse(session=answer)
            return answer
        if cluster is not None:
            # The end is durable before the caller hears of it, and only then (review i12b, 3).
            outcome = await cluster.commits.ended(session_id)
            if outcome is Outcome.FENCE_LOST:
                # Another replica took the worker over: the session lives on there. Ask it.
                answer = await cluster.routes.forward("CompleteSession", request, context, session_id,
                                                      session_service_pb2.CompleteSessionResponse)
                if isinstance(answer, session_pb2.Session):
                    return session_service_pb2.CompleteSessionResponse(session=answer)
                return answer
            if outcome is not Outcome.COMMITTED:
                raise OwnerUnavailableError(
                    f"session {session_id!r}: the store has not confirmed its end yet (an etcd election?); "
                    "retry (CompleteSession is idempotent)", metadata={"session_id": session_id})
        _annotate(session.session_id, session.task_queue, session.worker.key.worker_id)
        return session_service_pb2.CompleteSessionResponse(session=self.engine.to_pb(session))

    @rpc
    async def GetSessionInfo(self, request: session_service_pb2.GetSessionInfoRequest,
                             context: Context) -> session_service_pb2.GetSessionInfoResponse:
        session_id = validate.name(request.session_id, "session_id", required=True)
        try:
            session = self.engine.get_session(session_id, auth.current().viewer)
        except SessionNotFoundError:
            if self.engine.cluster is None:
                raise
            answer = await self.engine.cluster.routes.forward("GetSessionInfo", request, context, session_id,
                                                              session_service_pb2.GetSessionInfoResponse)
            if isinstance(answer, session_pb2.Session):
                return session_service_pb2.GetSessionInfoResponse(session=answer,
                                                                  server_incarnation=self.engine.incarnation)
            return answer
        return session_service_pb2.GetSessionInfoResponse(
            session=self.engine.to_pb(session), server_incarnation=self.engine.incarnation)

    @rpc
    def ExecuteActivity(self, request: session_service_pb2.ExecuteActivityRequest,
                        context: Context) -> Awaitable[session_service_pb2.ExecuteActivityResponse]:
        # Returns the engine's coroutine rather than awaiting it: one coroutine frame less that every
        # resumption of the call passes through (rpc's wrapper awaits it; a bad request raises here).
        session_id = validate.name(request.session_id, "session_id", required=True)
        activity_type = validate.name(request.activity_type, "activity_type", required=True)
        timeout = self.engine.config.activity_timeout.total_seconds()
        if request.HasField("start_to_close_timeout"):
            timeout = validate.seconds(request.start_to_close_timeout, "start_to_close_timeout", allow_zero=False)
        heartbeat_timeout = None
        if request.HasField("heartbeat_timeout"):
            heartbeat_timeout = validate.seconds(request.heartbeat_timeout, "heartbeat_timeout", allow_zero=False)
        attempt = validate.attempt(request.attempt)
        tracing.annotate(session_id=session_id, activity_type=activity_type)
        # (A protobuf map's len() is O(1); dict() of an empty one is not free.)
        headers = tracing.outgoing_headers(dict(request.headers) if request.headers else {},
                                           context.invocation_metadata())
        cluster = self.engine.cluster
        if cluster is not None and not self.engine.holds(session_id):
            return self._forward_activity(request, context, session_id)
        return self.engine.execute_activity(
            session_id, activity_type, request.input, timeout, headers, heartbeat_timeout=heartbeat_timeout,
            attempt=attempt, heartbeat_details=request.heartbeat_details if request.HasField("heartbeat_details")
            else None, viewer=auth.current().viewer)

    async def _forward_activity(self, request: session_service_pb2.ExecuteActivityRequest, context: Context,
                                session_id: str) -> session_service_pb2.ExecuteActivityResponse:
        """Replicas: the session is held by another replica; it runs the activity."""
        assert self.engine.cluster is not None
        answer = await self.engine.cluster.routes.forward("ExecuteActivity", request, context, session_id,
                                                          session_service_pb2.ExecuteActivityResponse)
        if isinstance(answer, session_pb2.Session):  # never for ExecuteActivity
            raise SessionNotFoundError(session_id)
        return answer

    @rpc_stream
    async def WatchSession(self, request: session_service_pb2.WatchSessionRequest,
                           context: Context) -> AsyncIterator[session_service_pb2.WatchSessionResponse]:
        session_id = validate.name(request.session_id, "session_id", required=True)
        cluster = self.engine.cluster
        viewer = auth.current().viewer
        updates = self.engine.watch_session(session_id, viewer) if cluster is None or self.engine.holds(session_id) \
            else cluster.routes.watch_remote(session_id, viewer, context)
        async for session in updates:
            yield session_service_pb2.WatchSessionResponse(session=session)

    @rpc
    async def ListSessions(self, request: session_service_pb2.ListSessionsRequest,
                           context: Context) -> session_service_pb2.ListSessionsResponse:
        size, after = validate.page(request.page_size, request.page_token)
        resource = validate.resource_filter(request.resource)
        viewer = auth.current().viewer
        principal = validate.name(request.principal, "principal", required=False) or None
        if not viewer.sees_all:
            if principal not in (None, viewer.principal):
                return session_service_pb2.ListSessionsResponse()  # another principal's: none it may see
            principal = viewer.principal
        cluster = self.engine.cluster
        if cluster is not None:  # the whole cluster's, from the store
            stored, more = await cluster.listing.sessions(
                task_queue=validate.name(request.task_queue, "task_queue", required=False),
                owner=validate.name(request.owner, "owner", required=False),
                state=validate.state_filter(request.state), principal=principal, resource=resource, after=after,
                limit=size)
            return session_service_pb2.ListSessionsResponse(
                sessions=stored, next_page_token="" if more is None else str(more))
        page, more = self.engine.table.sessions(
            task_queue=validate.name(request.task_queue, "task_queue", required=False),
            owner=validate.name(request.owner, "owner", required=False),
            state=validate.state_filter(request.state), after_seq=after, limit=size, principal=principal,
            where=(lambda s: s.demand[resource] > 0) if resource else None,
        )
        return session_service_pb2.ListSessionsResponse(
            sessions=[self.engine.to_pb(s) for s in page], next_page_token="" if more is None else str(more))

    @rpc
    async def ListWorkers(self, request: session_service_pb2.ListWorkersRequest,
                          context: Context) -> session_service_pb2.ListWorkersResponse:
        size, after = validate.worker_page(request.page_size, request.page_token)
        task_queue = validate.name(request.task_queue, "task_queue", required=False)
        page, more = self.engine.table.workers(task_queue=task_queue, after=after, limit=size)
        local = session_service_pb2.ListWorkersResponse(
            workers=[self.engine.worker_to_pb(w) for w in page], next_page_token=validate.worker_token(more),
            waiting=self.engine.waiting_to_pb(task_queue) if after is None else ())
        cluster = self.engine.cluster
        if cluster is None or cluster.routes.forwarded(context):
            return local
        return await cluster.listing.workers(request, context, local)  # every replica's workers

    async def _placed(self, placing: Awaitable[Session]) -> session_pb2.Session:
        """The session a Create or Recreate placed here, as sent back; or, when its request id was
        used on another replica first, the session placed there."""
        try:
            session = await placing
        except PlacedElsewhereError as elsewhere:
            return await self._stored(elsewhere.session_id)
        _annotate(session.session_id, session.task_queue, session.worker.key.worker_id)
        return self.engine.to_pb(session)

    async def _stored(self, session_id: str) -> session_pb2.Session:
        """A session another replica placed (a create's request id used there first)."""
        assert self.engine.cluster is not None
        found = await self.engine.cluster.routes.read(session_id)
        if found is None:
            raise SessionNotFoundError(session_id)
        return found[0]

    @rpc_stream
    def WorkerHeartbeat(self, request_iterator: AsyncIterator[worker_pb2.WorkerHeartbeatRequest],
                        context: Context) -> AsyncIterator[worker_pb2.WorkerHeartbeatResponse]:
        # Returns the stream's generator rather than re-yielding it: one generator layer less per
        # message and per connected worker (rpc_stream's wrapper is the async generator grpc sees).
        return serve_worker(self.engine, request_iterator, self._host)
