"""What the port serves besides sessions: health, reflection, bearer-token roles, and a clean shutdown."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sessiond_client.api.v1 import session_service_pb2

from tests.integration.conftest import (
    OPEN,
    QUEUE,
    ServerFactory,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
    rpc_error,
)
from tests.integration.rawworker import RawWorker

SERVICE = "sessiond.v1.SessionService"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio
async def test_health_reports_serving_for_the_server_and_the_service(sessiond: Sessiond) -> None:
    health = health_pb2_grpc.HealthStub(sessiond.channel)

    for service in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == SERVING, service


@pytest.mark.asyncio
async def test_reflection_lists_the_session_service_and_serves_its_descriptor(sessiond: Sessiond) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(sessiond.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]

    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=5)]

    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files, replies[1]
    protos = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files]
    service = next(s for p in protos for s in p.service if f"{p.package}.{s.name}" == SERVICE)
    assert {m.name for m in service.method} == set(
        session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].methods_by_name)


@pytest.mark.asyncio
async def test_shutdown_reports_not_serving_ends_worker_streams_and_finishes_before_the_grace(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    session_watch = sessiond.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session.session_id))
    assert (await asyncio.wait_for(session_watch.read(), 5)).session.state == OPEN
    watch = health_pb2_grpc.HealthStub(sessiond.channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
    loop = asyncio.get_running_loop()
    started = loop.time()

    stopping = asyncio.create_task(sessiond.server.stop(grace=20))

    assert (await asyncio.wait_for(watch.read(), 5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    await eventually(lambda: worker.stream_done.is_set(), message="the worker's stream ended")
    assert worker.stream_error is None  # ended by the server with OK, not cut
    # A stop is a restart: the worker was told so (it keeps its sessions for the next server) ...
    assert worker.restarting and worker.held == {session.session_id}
    # ... and session watches end at once with a retryable UNAVAILABLE, not with a failure, so they
    # neither hold the grace nor tell the caller its session died.
    await rpc_error(session_watch.read(), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    await asyncio.wait_for(stopping, 10)
    assert loop.time() - started < 10, "stop waited for the grace period: a stream was left open"


@pytest.mark.asyncio
async def test_shutdown_answers_a_waiting_create_at_once_with_a_retryable_shutting_down(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=1)
    await sessiond.create(QUEUE)
    waiting = asyncio.create_task(sessiond.create(QUEUE, options=options(creation=60)))
    await eventually(lambda: sessiond.waiting == 1, message="the second create is waiting")
    loop = asyncio.get_running_loop()
    started = loop.time()

    stopping = asyncio.create_task(sessiond.server.stop(grace=20))

    await rpc_error(waiting, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    await asyncio.wait_for(stopping, 10)
    assert loop.time() - started < 10, "the waiting create held the grace period"


@pytest.mark.asyncio
async def test_bearer_tokens_separate_worker_and_caller_roles(make_server: ServerFactory) -> None:
    server = await make_server(worker_token="w-secret", caller_token="c-secret")
    caller = (("authorization", "Bearer c-secret"),)
    request = session_service_pb2.ListWorkersRequest()

    await rpc_error(server.stub.ListWorkers(request), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    await rpc_error(server.stub.ListWorkers(request, metadata=(("authorization", "Bearer w-secret"),)),
                    grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    denied = RawWorker(server.target, QUEUE, worker_id="intruder", metadata=caller)
    await denied.start(wait=False)
    try:
        await eventually(lambda: denied.stream_done.is_set())
        assert denied.stream_error == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await denied.stop()

    async with RawWorker(server.target, QUEUE, worker_id="w1",
                         metadata=(("authorization", "Bearer w-secret"),)):
        reply = await server.stub.ListWorkers(request, metadata=caller)
        assert [w.worker_id for w in reply.workers] == ["w1"]
    # Health stays open for load balancers.
    check = await health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == SERVING
