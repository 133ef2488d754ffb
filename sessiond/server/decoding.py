"""One decoding path for every RPC the server answers: sessiond's, health's and reflection's.

Left to itself, gRPC parses each request with the method's ``FromString`` and, when that fails
(corrupt wire bytes, invalid UTF-8 in a string field), answers UNKNOWN and logs a traceback per
request. Here every method is registered *without* a deserializer — its handler receives raw bytes —
and parses them in :func:`add_service`'s wrappers: an undecodable request is INVALID_ARGUMENT
``MALFORMED_REQUEST`` and at most one WARNING per 10 s, never a traceback. The handlers are built
from the service descriptor, so a new RPC is covered without a line here.

The same wrappers run the authentication guard first (:meth:`sessiond.server.auth.Authenticator.guard`),
before a byte of the request is parsed: not a gRPC interceptor, because an interceptor cannot see
the TLS peer's certificate (``HandlerCallDetails`` has no auth context) and costs a handler lookup
per call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from sessiond.core.errors import MalformedRequestError, SessionError
from sessiond.logs import RateLimitedWarning
from sessiond.server.errors import abort_with, to_status

log = logging.getLogger("sessiond.server")

Context = grpc.aio.ServicerContext[Any, Any]
Decode = Callable[[bytes, Context], Message]
Guard = Callable[[Context], None]


def undecodable_warning() -> RateLimitedWarning:
    """The WARNING for undecodable requests; share one per server, so a flood on any method costs
    one line per 10 s."""
    return RateLimitedWarning(log, "undecodable request", interval=10.0)


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor,
                undecodable: RateLimitedWarning, guards: Callable[[str], Guard | None] | None = None) -> None:
    """Register ``servicer``'s implementation of ``service``; every request is parsed here.

    Each method named in the descriptor must exist on ``servicer``; a server-streaming one must
    be an async generator function (OpenTelemetry's aio interceptor breaks read()/write() handlers).
    ``guards`` gives each method path its authentication guard (None: no check), run before decoding.
    """
    def guard(method: MethodDescriptor) -> Guard | None:
        return None if guards is None else guards(f"/{service.full_name}/{method.name}")

    handlers = {method.name: _handler(method, getattr(servicer, method.name), undecodable, guard(method))
                for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods take grpc's fast path (no generic-handler lookup per call).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _decoder(method: MethodDescriptor, undecodable: RateLimitedWarning) -> Decode:
    request_type = message_factory.GetMessageClass(method.input_type)
    type_name = method.input_type.full_name
    path = f"/{method.containing_service.full_name}/{method.name}"

    def decode(raw: bytes, context: Context) -> Message:
        try:
            return request_type.FromString(raw)
        except Exception as exc:  # whatever the parser raises, the bytes came from the peer: not our bug
            # upb says "Error parsing message with type 'T': <why>"; keep the why.
            why = str(exc).rpartition("': ")[2] or type(exc).__name__
            undecodable.warn(f"on {path} from {context.peer()}: {why}")
            raise MalformedRequestError(f"request is not a valid {type_name}: {why}",
                                        metadata={"message_type": type_name}) from None

    return decode


async def _abort(context: Context, error: SessionError) -> NoReturn:
    await abort_with(context, to_status(error))
    raise AssertionError("unreachable: abort raises")


async def _decoded(raw_requests: AsyncIterator[bytes], decode: Decode, context: Context) -> AsyncIterator[Message]:
    """A client stream, parsed: an undecodable message raises MalformedRequestError to its reader."""
    async for raw in raw_requests:
        yield decode(raw, context)


def _handler(method: MethodDescriptor, behavior: Any, undecodable: RateLimitedWarning,
             guard: Guard | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    decode = _decoder(method, undecodable)
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    if method.server_streaming and not inspect.isasyncgenfunction(behavior):
        raise TypeError(f"{method.full_name}: a server-streaming handler must be an async generator function")
    if method.client_streaming and not method.server_streaming:
        raise TypeError(f"{method.full_name}: client-streaming unary methods are not supported (none is served)")

    if method.client_streaming:
        async def stream_request(raw_requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            if guard is not None:
                try:
                    guard(context)  # authentication, before a byte is parsed
                except SessionError as refused:
                    await _abort(context, refused)
            try:
                async with aclosing(behavior(_decoded(raw_requests, decode, context), context)) as responses:
                    async for response in responses:
                        yield response
            except MalformedRequestError as error:  # raised to the behaviour as it read its requests
                await _abort(context, error)

        return grpc.stream_stream_rpc_method_handler(stream_request, response_serializer=serialize)

    if method.server_streaming:
        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            if guard is not None:
                try:
                    guard(context)  # authentication, before a byte is parsed
                except SessionError as refused:
                    await _abort(context, refused)
            try:
                request = decode(raw, context)
            except MalformedRequestError as error:
                await _abort(context, error)
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)

    async def unary_unary(raw: bytes, context: Context) -> Any:
        if guard is not None:
            try:
                guard(context)  # authentication, before a byte is parsed
            except SessionError as refused:
                await _abort(context, refused)
        try:
            request = decode(raw, context)
        except MalformedRequestError as error:
            await _abort(context, error)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
