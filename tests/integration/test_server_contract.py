"""Contract: every RPC in the SessionService descriptor has a real servicer method of the right shape."""

from __future__ import annotations

import inspect

import pytest
from sessiond_client.api.v1 import session_service_pb2, session_service_pb2_grpc

from sessiond.server.servicer import SessionServicer

METHODS = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].methods


def test_the_descriptor_has_the_rpcs_of_the_spec() -> None:
    assert {m.name for m in METHODS} == {
        "CreateSession", "RecreateSession", "CompleteSession", "GetSessionInfo", "WorkerHeartbeat",
        "ExecuteActivity", "WatchSession", "ListSessions", "ListWorkers",
    }


@pytest.mark.parametrize("method", list(METHODS), ids=lambda m: m.name)
def test_every_rpc_has_a_servicer_method_that_overrides_the_generated_stub(method) -> None:  # type: ignore[no-untyped-def]
    implemented = getattr(SessionServicer, method.name, None)
    generated = getattr(session_service_pb2_grpc.SessionServiceServicer, method.name)

    assert implemented is not None, f"SessionServicer lacks {method.name}"
    assert implemented is not generated, f"{method.name} is the generated UNIMPLEMENTED stub"
    # grpc.aio picks the streaming style by inspecting the handler: a server stream must be an async
    # generator function (a plain def returning one fails with UNKNOWN), a unary response a coroutine.
    if method.server_streaming:
        assert inspect.isasyncgenfunction(implemented), method.name
    else:
        assert inspect.iscoroutinefunction(implemented), method.name
