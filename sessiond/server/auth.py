"""Bearer-token roles: workers present the worker token, callers the caller token.

Health and reflection stay open (load balancers and grpcurl must reach them).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from sessiond.core.errors import PermissionDeniedError, SessionError, UnauthenticatedError
from sessiond.server.errors import abort_with, to_status

SERVICE_PREFIX = "/sessiond.v1.SessionService/"
WORKER_METHOD = SERVICE_PREFIX + "WorkerHeartbeat"


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class TokenAuthInterceptor(_Interceptor):
    """Checks ``authorization: Bearer <token>`` on sessiond RPCs against the role's token."""

    def __init__(self, *, worker_token: str | None, caller_token: str | None) -> None:
        self._worker = worker_token
        self._caller = caller_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        method = handler_call_details.method
        if not method.startswith(SERVICE_PREFIX):
            return await continuation(handler_call_details)
        want, other = (self._worker, self._caller) if method == WORKER_METHOD else (self._caller, self._worker)
        if want is None:
            return await continuation(handler_call_details)
        got = _bearer(handler_call_details.invocation_metadata)
        if got is not None and hmac.compare_digest(got.encode(), want.encode()):
            return await continuation(handler_call_details)
        if got is not None and other is not None and hmac.compare_digest(got.encode(), other.encode()):
            error: SessionError = PermissionDeniedError(f"this token's role may not call {method}")
        else:
            error = UnauthenticatedError("missing or invalid bearer token")
        return _deny(error, streaming_request=method == WORKER_METHOD,
                     streaming_response=method in (WORKER_METHOD, SERVICE_PREFIX + "WatchSession"))


def _deny(error: SessionError, *, streaming_request: bool, streaming_response: bool) -> _Handler:
    status = to_status(error)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, status)

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, status)
        yield  # pragma: no cover - makes this an async generator

    if streaming_request and streaming_response:
        return grpc.stream_stream_rpc_method_handler(stream)
    if streaming_response:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)
