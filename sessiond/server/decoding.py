"""One decoding path for every RPC the server answers: sessiond's, health's and reflection's.

Left to itself, gRPC parses each request with the method's ``FromString`` and, when that fails
(corrupt wire bytes, invalid UTF-8 in a string field), answers UNKNOWN and logs a traceback per
request. Here every method's deserializer never raises: bytes that do not parse become an
:class:`_Undecodable` marker, which :func:`add_service`'s wrappers answer with INVALID_ARGUMENT
``MALFORMED_REQUEST`` and at most one WARNING per 10 s, never a traceback. (Parsing in grpc's
deserializer, not in the handler, also means the wire bytes are not kept: grpc holds the handler's
argument for the whole call, and an activity input would otherwise stay in memory twice while
its ExecuteActivity waits.) The handlers are built from the service descriptor, so a new RPC is
covered without a line here.

The same wrappers run the authentication guard (:meth:`sessiond.server.auth.Authenticator.guard`)
before the request is looked at: an unauthenticated caller is answered UNAUTHENTICATED whatever its
body held, and its bytes are never checked or logged. (A unary request has been parsed by then —
grpc runs the deserializer before the handler, and the bytes had been received anyway — but a
stream's messages are parsed only as the behaviour reads them, after the guard.) Not a gRPC
interceptor, because an interceptor cannot see the TLS peer's certificate (``HandlerCallDetails`` has
no auth context) and costs a handler lookup per call.
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


class _Undecodable:
    """What the deserializer returns for bytes that do not parse: why (the handler answers)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


Parse = Callable[[bytes], "Message | _Undecodable"]
Check = Callable[["Message | _Undecodable", Context], Message]
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
    ``guards`` gives each method path its authentication guard (None: no check), run before the
    request is checked.
    """
    def guard(method: MethodDescriptor) -> Guard | None:
        return None if guards is None else guards(f"/{service.full_name}/{method.name}")

    handlers = {method.name: _handler(method, getattr(servicer, method.name), undecodable, guard(method))
                for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods take grpc's fast path (no generic-handler lookup per call).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _parser(method: MethodDescriptor) -> Parse:
    request_type = message_factory.GetMessageClass(method.input_type)

    def parse(raw: bytes) -> Message | _Undecodable:
        try:
            return request_type.FromString(raw)
        except Exception as exc:  # whatever the parser raises, the bytes came from the peer: not our bug
            # upb says "Error parsing message with type 'T': <why>"; keep the why.
            return _Undecodable(str(exc).rpartition("': ")[2] or type(exc).__name__)

    return parse


def _checker(method: MethodDescriptor, undecodable: RateLimitedWarning) -> Check:
    type_name = method.input_type.full_name
    path = f"/{method.containing_service.full_name}/{method.name}"

    def check(request: Message | _Undecodable, context: Context) -> Message:
        if isinstance(request, _Undecodable):
            undecodable.warn(f"on {path} from {context.peer()}: {request.why}")
            raise MalformedRequestError(f"request is not a valid {type_name}: {request.why}",
                                        metadata={"message_type": type_name})
        return request

    return check


async def _abort(context: Context, error: SessionError) -> NoReturn:
    await abort_with(context, to_status(error))
    raise AssertionError("unreachable: abort raises")


async def _authenticate(guard: Guard, context: Context) -> None:
    """Run the guard; a refusal ends the call with its status. (Called only when there is a guard:
    an await of a coroutine that does nothing still costs one per request.)"""
    try:
        guard(context)
    except SessionError as refused:
        await _abort(context, refused)


async def _decoded(requests: AsyncIterator[Message | _Undecodable], check: Check,
                   context: Context) -> AsyncIterator[Message]:
    """A client stream, checked: an undecodable message raises MalformedRequestError to its reader."""
    async for request in requests:
        yield check(request, context)


def _handler(method: MethodDescriptor, behavior: Any, undecodable: RateLimitedWarning,
             guard: Guard | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    parse = _parser(method)
    check = _checker(method, undecodable)
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    if method.server_streaming and not inspect.isasyncgenfunction(behavior):
        raise TypeError(f"{method.full_name}: a server-streaming handler must be an async generator function")
    if method.client_streaming and not method.server_streaming:
        raise TypeError(f"{method.full_name}: client-streaming unary methods are not supported (none is served)")

    if method.client_streaming:
        async def stream_request(requests: AsyncIterator[Message | _Undecodable],
                                 context: Context) -> AsyncIterator[Any]:
            if guard is not None:
                await _authenticate(guard, context)  # before a message of the stream is parsed
            try:
                async with aclosing(behavior(_decoded(requests, check, context), context)) as responses:
                    async for response in responses:
                        yield response
            except MalformedRequestError as error:  # raised to the behaviour as it read its requests
                await _abort(context, error)

        return grpc.stream_stream_rpc_method_handler(stream_request, request_deserializer=parse,
                                                     response_serializer=serialize)

    if method.server_streaming:
        async def unary_stream(parsed: Message | _Undecodable, context: Context) -> AsyncIterator[Any]:
            if guard is not None:
                await _authenticate(guard, context)  # before the request is checked
            try:
                request = check(parsed, context)
            except MalformedRequestError as error:
                await _abort(context, error)
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, request_deserializer=parse,
                                                    response_serializer=serialize)

    async def unary_unary(parsed: Message | _Undecodable, context: Context) -> Any:
        if guard is not None:
            await _authenticate(guard, context)  # before the request is checked
        try:
            request = check(parsed, context)
        except MalformedRequestError as error:
            await _abort(context, error)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=parse,
                                               response_serializer=serialize)
