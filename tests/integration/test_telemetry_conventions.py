"""Telemetry to the OpenTelemetry semantic conventions for RPC: `rpc.grpc.status_code` on spans, server
spans not ERROR for caller-caused codes, the `rpc.server.duration` histogram, bounded label cardinality,
creation-rejection counters, trace ids in JSON logs, and OTEL_EXPORTER_OTLP_PROTOCOL."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sessiond_client import CreationTimeoutError, NoCapacityError, SessionClient, SessionNotFoundError
from sessiond_client.api.v1 import session_service_pb2_grpc

from sessiond.config import ServerConfig
from sessiond.logs import JsonFormatter
from sessiond.server import create_server
from sessiond.telemetry import SessionMetrics
from sessiond.telemetry.metrics import OVERFLOW, Metrics
from sessiond.telemetry.metrics import otlp_metric_exporter as metric_exporter_for
from sessiond.telemetry.tracing import _otlp_span_exporter as span_exporter_for
from tests.integration.conftest import Sessiond, WorkerFactory
from tests.integration.test_metrics import _scrape, _value
from tests.integration.test_tracing import spans  # noqa: F401  # the shared in-memory span fixture

SERVICE = "sessiond.v1.SessionService"


@pytest_asyncio.fixture
async def sessiond(metrics: tuple[SessionMetrics, int]) -> AsyncIterator[Sessiond]:
    server, grpc_port = await create_server(ServerConfig(listen="127.0.0.1:0", recovery_window=timedelta(0)),
                                            metrics=metrics[0])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield Sessiond(server, grpc_port, channel, session_service_pb2_grpc.SessionServiceStub(channel))
    await channel.close()
    await server.stop(0)


def _spans(exporter: InMemorySpanExporter, method: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/{method}" and s.kind == kind]


@pytest.mark.asyncio
async def test_server_spans_carry_the_status_code_and_are_error_only_for_server_side_codes(
        spans: InMemorySpanExporter, sessiond: Sessiond, make_worker: WorkerFactory) -> None:  # noqa: F811
    await make_worker("w", capacity=1)
    async with await SessionClient.connect(sessiond.target) as client:
        with pytest.raises(SessionNotFoundError):
            await client.get_session_info("nope")
        async with client.create_session("q", creation_timeout=5):
            pass
        await sessiond.create("q")  # the only slot, taken outside the client's context
        with pytest.raises(CreationTimeoutError):
            async with client.create_session("q", creation_timeout=0.2):
                pass

    [ok, _, timed_out] = sorted(_spans(spans, "CreateSession", SpanKind.SERVER),
                                key=lambda s: s.attributes.get("rpc.grpc.status_code", 0) if s.attributes else 0)
    [not_found] = _spans(spans, "GetSessionInfo", SpanKind.SERVER)
    assert dict(ok.attributes or {})["rpc.grpc.status_code"] == 0 and ok.status.status_code is StatusCode.UNSET
    # NOT_FOUND is the caller's doing: not an error of the server.
    assert dict(not_found.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not_found.status.status_code is StatusCode.UNSET
    assert dict(not_found.attributes or {})["sessiond.error_reason"] == "SESSION_NOT_FOUND"
    # DEADLINE_EXCEEDED is one of the server-side codes of the conventions.
    assert dict(timed_out.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert timed_out.status.status_code is StatusCode.ERROR
    # Client spans: the code too, and ERROR for anything but OK.
    [client_not_found] = _spans(spans, "GetSessionInfo", SpanKind.CLIENT)
    assert dict(client_not_found.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert client_not_found.status.status_code is StatusCode.ERROR
    client_ok = _spans(spans, "CompleteSession", SpanKind.CLIENT)[0]
    assert dict(client_ok.attributes or {})["rpc.grpc.status_code"] == 0


@pytest.mark.asyncio
async def test_rpc_server_duration_and_creation_rejections_are_exported(
        sessiond: Sessiond, make_worker: WorkerFactory, metrics: tuple[SessionMetrics, int]) -> None:
    await make_worker("w", capacity=1)
    async with await SessionClient.connect(sessiond.target) as client:
        await sessiond.create("q")  # the only slot, taken outside the client's context
        with pytest.raises(NoCapacityError):
            async with client.create_session("q", creation_timeout=0):
                pass
        with pytest.raises(CreationTimeoutError):
            async with client.create_session("q", creation_timeout=timedelta(milliseconds=100)):
                pass
        with pytest.raises(SessionNotFoundError):
            await client.get_session_info("nope")

    samples = await _scrape(metrics[1])
    base = {"rpc_system": "grpc", "rpc_service": SERVICE}
    assert _value(samples, "rpc_server_duration_milliseconds_count", **base, rpc_method="CreateSession",
                  rpc_grpc_status_code="0") == 1  # the raw create
    assert _value(samples, "rpc_server_duration_milliseconds_count", **base, rpc_method="CreateSession",
                  rpc_grpc_status_code=str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])) == 1
    assert _value(samples, "rpc_server_duration_milliseconds_count", **base, rpc_method="GetSessionInfo",
                  rpc_grpc_status_code=str(grpc.StatusCode.NOT_FOUND.value[0])) == 1
    assert _value(samples, "sessiond_creation_rejected_total", task_queue="q", reason="NO_CAPACITY") == 1
    assert _value(samples, "sessiond_creation_rejected_total", task_queue="q", reason="CREATION_TIMEOUT") == 1


def _label_values(reader: InMemoryMetricReader, metric: str, label: str) -> set[str]:
    data = reader.get_metrics_data()
    assert data is not None
    return {str(point.attributes[label])
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == metric
            for point in m.data.data_points if point.attributes and label in point.attributes}


def test_caller_controlled_labels_are_capped_with_an_overflow_value() -> None:
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("test"), label_limit=10)
    for n in range(30):
        metrics.activity_done(f"made-up-{n}", 0.01, "failed")
        metrics.session_placed(f"queue-{n}")
        metrics.session_ended(f"queue-{n}", None)

    types = _label_values(reader, "sessiond.activity.duration", "activity_type")
    queues = _label_values(reader, "sessiond.sessions.open", "task_queue")
    assert types == {f"made-up-{n}" for n in range(10)} | {OVERFLOW}
    assert queues == {f"queue-{n}" for n in range(10)} | {OVERFLOW}
    # An admitted value keeps its series: the open gauge of each queue returned to zero.
    data = reader.get_metrics_data()
    assert data is not None
    opens = [p.value for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
             if m.name == "sessiond.sessions.open" for p in m.data.data_points]
    assert opens and all(v == 0 for v in opens)


def test_json_logs_carry_the_trace_and_span_id_of_the_span_being_served(
        spans: InMemorySpanExporter) -> None:  # noqa: F811
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("sessiond.test-trace-ids")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside any span")
        with trace.get_tracer("test").start_as_current_span("rpc") as span:
            log.warning("inside", extra={"session_id": "s-1"})
            context = span.get_span_context()
    finally:
        log.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and "span_id" not in outside
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["session_id"] == "s-1"


@pytest.mark.parametrize(("env", "module"), [
    ({}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}, "http"),
])
def test_the_otlp_protocol_variable_picks_the_exporters_transport(env: dict[str, str], module: str) -> None:
    assert f".proto.{module}." in type(span_exporter_for(env)).__module__
    assert f".proto.{module}." in type(metric_exporter_for(env)).__module__


def test_an_unsupported_otlp_protocol_is_a_start_up_error_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported OTLP protocol 'http/json'"):
        span_exporter_for({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
