"""The one table from domain errors to gRPC status code + ErrorInfo reason (SPEC §3).

Servicer methods do not catch anything: :func:`rpc` wraps them, turns a
:class:`~sessiond.core.errors.SessionError` into a rich status, lets cancellation pass, and
logs anything unmapped once as INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sessiond.core import errors as e
from sessiond.telemetry import tracing

log = logging.getLogger("sessiond.server")

DOMAIN = "sessiond"

# Every domain error, its status code. The reason comes from the error itself (error.reason).
class PlacedElsewhereError(Exception):
    """Replicas: a create's request id was already placed by another replica; the call is answered
    with that session (read from the store), as a retry on the same replica would be."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


STATUS_CODES: dict[type[e.SessionError], grpc.StatusCode] = {
    e.SessionNotFoundError: grpc.StatusCode.NOT_FOUND,
    e.ExistingOpenSessionError: grpc.StatusCode.FAILED_PRECONDITION,
    e.CreationTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.WorkerUnavailableError: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.ActivityTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.NoCapacityError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    e.InvalidRecreateTokenError: grpc.StatusCode.INVALID_ARGUMENT,
    e.MalformedRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    e.SessionFailedError: grpc.StatusCode.FAILED_PRECONDITION,
    e.SessionClosedError: grpc.StatusCode.FAILED_PRECONDITION,
    e.ActivityAbortedError: grpc.StatusCode.ABORTED,
    e.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    e.ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
    e.MessageTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.WorkerBackloggedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.TooManyWaitersError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.WorkerDetachedError: grpc.StatusCode.ABORTED,
    e.RecoveringError: grpc.StatusCode.UNAVAILABLE,
    e.OwnerUnavailableError: grpc.StatusCode.UNAVAILABLE,
    e.WorkerIdInUseError: grpc.StatusCode.ALREADY_EXISTS,
}


def to_status(error: e.SessionError) -> grpc.Status:
    """The rich gRPC status for a domain error: code, message and an ErrorInfo detail."""
    code = STATUS_CODES.get(type(error), grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=[detail])
    return rpc_status.to_status(status)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    """End the RPC with a rich status (raises)."""
    await context.abort_with_status(status)  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks it


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception ends an RPC with (for spans and ``rpc.server.duration``)."""
    if isinstance(exc, e.SessionError):
        return STATUS_CODES.get(type(exc), grpc.StatusCode.INTERNAL)
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str,
                 span: Any = None) -> None:
    if isinstance(exc, e.SessionError) and type(exc) in STATUS_CODES:
        tracing.mark_status(span, STATUS_CODES[type(exc)], exc.reason, exc.message)
        await abort_with(context, to_status(exc))
    tracing.mark_status(span, grpc.StatusCode.INTERNAL, "INTERNAL", repr(exc))
    log.exception("internal error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def rpc(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary servicer method: a server span; domain errors become rich statuses; cancellation passes."""

    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        metrics = self.engine.metrics  # type: ignore[attr-defined]  # every servicer holds the engine
        if not tracing.tracing_enabled() and not metrics.enabled:
            # The hot path with telemetry off: no span, no clock, no metadata copy.
            try:
                return await fn(self, request, context)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await _abort(context, exc, method)
                raise  # unreachable: abort raises
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        with tracing.server_span(method, context.invocation_metadata()) as span:
            try:
                return await fn(self, request, context)  # the span already says OK
            except BaseException as exc:
                code = status_of(exc)
                if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
                    tracing.mark_status(span, code)
                    raise
                await _abort(context, exc, method, span)
                raise  # unreachable: abort raises
            finally:
                metrics.rpc_done(method, code, time.perf_counter() - started)

    return wrapper


def rpc_stream(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Wrap a server-streaming servicer method (an async generator) the same way as :func:`rpc`."""

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        # No span: a stream lives as long as a worker or a watch (hours); one span for it helps no one.
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, fn.__name__)

    return wrapper
