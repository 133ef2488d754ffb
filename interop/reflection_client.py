"""A sessiond caller with no .proto files and no generated sessiond stubs: server reflection only.

This is what grpcurl, grpcui and Postman do, in a page of Python. It

1. asks the server's ``grpc.reflection.v1alpha.ServerReflection`` for its services,
2. fetches the ``FileDescriptorProto`` that defines ``sessiond.v1.SessionService`` together with
   every file it depends on (asking again, by file name, for any the server left out),
3. loads them into a fresh ``DescriptorPool`` in dependency order and builds message classes with
   ``message_factory.GetMessageClass``,
4. calls ``GetSessionInfo`` (and ``ListSessions`` when no ``--session-id`` is given) through a
   generic ``channel.unary_unary(path, serializer, deserializer)``,

and prints one JSON object: the services, the SessionService methods with their types, and the
session read. Run it as its own process (it must not share a process with code that imported the
generated stubs, or the proof proves nothing)::

    python interop/reflection_client.py --target 127.0.0.1:50051 [--session-id ID]

Exit status: 0 on success, 1 on an RPC error or a missing service (a JSON line on stderr says which).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "sessiond.v1.SessionService"


class ReflectionError(Exception):
    """The server's reflection answer was not what a client can work with."""


class Reflector:
    """A client of one server's reflection service, collecting file descriptors into a fresh pool."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._timeout = timeout
        self.files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        # A pool of our own: nothing in it comes from generated code, everything from the server.
        self.pool = descriptor_pool.DescriptorPool()

    def _ask(self, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        # ServerReflectionInfo is a bidi stream; one request per stream keeps this simple.
        responses: Iterator[reflection_pb2.ServerReflectionResponse] = self._stub.ServerReflectionInfo(
            iter([request]), timeout=self._timeout)
        response = next(responses)
        if response.HasField("error_response"):
            error = response.error_response
            raise ReflectionError(f"reflection error {error.error_code}: {error.error_message}")
        return response

    def list_services(self) -> list[str]:
        """The fully qualified names of every service the server exposes."""
        response = self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return [service.name for service in response.list_services_response.service]

    def _keep(self, response: reflection_pb2.ServerReflectionResponse) -> None:
        for raw in response.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            self.files.setdefault(proto.name, proto)

    def load_symbol(self, symbol: str) -> None:
        """Fetch the file defining ``symbol`` and all its dependencies, then load them into the pool."""
        self._keep(self._ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)))
        # The server normally sends the transitive dependencies along; ask by name for any it did not.
        missing = self._missing()
        while missing:
            for name in missing:
                self._keep(self._ask(reflection_pb2.ServerReflectionRequest(file_by_filename=name)))
            still = self._missing()
            if still & missing:
                raise ReflectionError(f"the server does not serve {sorted(still & missing)}")
            missing = still
        self._load_in_order()

    def _missing(self) -> set[str]:
        return {dep for proto in self.files.values() for dep in proto.dependency if dep not in self.files}

    def _load_in_order(self) -> None:
        """Add every collected file to the pool, each after the files it imports."""
        added: set[str] = set()

        def add(name: str) -> None:
            if name in added:
                return
            proto = self.files[name]
            for dependency in proto.dependency:
                add(dependency)
            self.pool.Add(proto)
            added.add(name)

        for name in sorted(self.files):
            add(name)

    def message_class(self, full_name: str) -> type[Message]:
        """A message class built from the reflected descriptor."""
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))


def unary(channel: grpc.Channel, reflector: Reflector, service: str, method: str, request: dict[str, Any],
          timeout: float, metadata: tuple[tuple[str, str], ...] | None) -> Message:
    """Call a unary method knowing only its name: types, path and encoding all come from reflection."""
    descriptor = reflector.pool.FindServiceByName(service).methods_by_name[method]
    request_class = reflector.message_class(descriptor.input_type.full_name)
    response_class = reflector.message_class(descriptor.output_type.full_name)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    message = json_format.ParseDict(request, request_class())
    response: Message = call(message, timeout=timeout, metadata=metadata)
    return response


def to_dict(message: Message) -> dict[str, Any]:
    """JSON-ready dict of a message, field names as in the .proto."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def run(target: str, session_id: str | None, timeout: float, token: str | None) -> dict[str, Any]:
    """Discover SessionService, read one session, and say what was seen."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        reflector = Reflector(channel, timeout)
        services = reflector.list_services()
        if SERVICE not in services:
            raise ReflectionError(f"{SERVICE} is not among the reflected services {services}")
        reflector.load_symbol(SERVICE)
        service = reflector.pool.FindServiceByName(SERVICE)
        methods = [
            {
                "name": m.name,
                "input_type": m.input_type.full_name,
                "output_type": m.output_type.full_name,
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
            for m in service.methods
        ]
        listed: list[dict[str, Any]] | None = None
        if session_id is None:
            page = to_dict(unary(channel, reflector, SERVICE, "ListSessions", {"page_size": 100}, timeout, metadata))
            listed = page.get("sessions", [])
            if not listed:
                raise ReflectionError("ListSessions returned no session to read")
            session_id = str(listed[-1]["session_id"])
        info = to_dict(unary(channel, reflector, SERVICE, "GetSessionInfo", {"session_id": session_id},
                             timeout, metadata))
    return {
        "services": sorted(services),
        "service": SERVICE,
        "methods": methods,
        "files": sorted(reflector.files),
        "listed_sessions": None if listed is None else len(listed),
        "session": info.get("session", {}),
        "server_incarnation": info.get("server_incarnation", ""),
        # The point of the exercise: nothing generated from sessiond's protos was imported.
        "imported_sessiond_stubs": sorted(m for m in sys.modules if m.startswith("sessiond")),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default=os.environ.get("SESSIOND_ADDRESS", "127.0.0.1:50051"),
                        help="host:port of sessiond [env SESSIOND_ADDRESS; default 127.0.0.1:50051]")
    parser.add_argument("--session-id", default=None,
                        help="session to read (default: the newest on the first ListSessions page)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per RPC [10]")
    parser.add_argument("--token", default=os.environ.get("SESSIOND_CALLER_TOKEN"),
                        help="caller bearer token [env SESSIOND_CALLER_TOKEN]")
    args = parser.parse_args(argv)
    try:
        seen = run(args.target, args.session_id, args.timeout, args.token)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(json.dumps({"error": {"code": code, "details": details}}), file=sys.stderr)
        return 1
    except ReflectionError as exc:
        print(json.dumps({"error": {"reflection": str(exc)}}), file=sys.stderr)
        return 1
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
