"""One trace from caller through sessiond to the worker, read from an in-memory span exporter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sessiond_client import ActivityError, SessionClient, SessionWorker

from sessiond.telemetry import tracing
from tests.integration.conftest import ServerFactory, Sessiond

QUEUE = "traced"
SERVICE = "sessiond.v1.SessionService"
_EXPORTER = InMemorySpanExporter()


async def echo(value: int) -> int:
    return value


def boom() -> None:
    raise ValueError("boom")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this test. The SDK provider is process-wide and can be set only once, so it is
    installed on first use and the exporter is cleared per test; server spans are switched on
    only for the test."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    tracing.enable(True)
    yield _EXPORTER
    tracing.enable(False)
    _EXPORTER.clear()


@pytest_asyncio.fixture
async def traced(make_server: ServerFactory) -> AsyncIterator[Sessiond]:
    sessiond = await make_server()
    worker = SessionWorker(sessiond.target, QUEUE, {"echo": echo, "boom": boom}, max_concurrent_sessions=2)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.wait_registered(), 10)
    yield sessiond
    worker.shutdown(drain=False)
    await asyncio.wait_for(running, 10)


def _one(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _parent_is(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    return child.parent.span_id == parent.context.span_id


@pytest.mark.asyncio
async def test_one_trace_runs_from_the_caller_through_the_server_to_the_workers_activity_span(
    spans: InMemorySpanExporter, traced: Sessiond,
) -> None:
    with trace.get_tracer("test").start_as_current_span("workflow") as root:
        async with await SessionClient.connect(traced.target) as client:
            async with client.create_session(QUEUE) as session:
                assert await session.execute_activity("echo", 7) == 7
                session_id, worker_id = session.id, session.info.worker.worker_id

    finished = list(spans.get_finished_spans())
    assert {s.context.trace_id for s in finished if s.context} == {root.get_span_context().trace_id}

    caller_create = _one(finished, f"{SERVICE}/CreateSession", SpanKind.CLIENT)
    server_create = _one(finished, f"{SERVICE}/CreateSession", SpanKind.SERVER)
    caller_run = _one(finished, f"{SERVICE}/ExecuteActivity", SpanKind.CLIENT)
    server_run = _one(finished, f"{SERVICE}/ExecuteActivity", SpanKind.SERVER)
    worker_run = _one(finished, "activity echo", SpanKind.CONSUMER)
    caller_complete = _one(finished, f"{SERVICE}/CompleteSession", SpanKind.CLIENT)
    server_complete = _one(finished, f"{SERVICE}/CompleteSession", SpanKind.SERVER)

    assert _parent_is(server_create, caller_create)
    assert _parent_is(server_run, caller_run)
    assert _parent_is(worker_run, server_run)
    assert _parent_is(server_complete, caller_complete)
    for span in (server_create, server_complete):
        attributes = dict(span.attributes or {})
        assert attributes["sessiond.session_id"] == session_id
        assert attributes["sessiond.task_queue"] == QUEUE
        assert attributes["sessiond.worker_id"] == worker_id
    assert "placed" in [event.name for event in server_create.events]
    assert dict(worker_run.attributes or {})["sessiond.session_id"] == session_id


@pytest.mark.asyncio
async def test_a_failing_activity_marks_the_workers_and_the_callers_spans_failed(
    spans: InMemorySpanExporter, traced: Sessiond,
) -> None:
    async with await SessionClient.connect(traced.target) as client:
        async with client.create_session(QUEUE) as session:
            with pytest.raises(ActivityError):
                await session.execute_activity("boom")

    finished = list(spans.get_finished_spans())
    worker_run = _one(finished, "activity boom", SpanKind.CONSUMER)
    caller_run = _one(finished, f"{SERVICE}/ExecuteActivity", SpanKind.CLIENT)
    assert not worker_run.status.is_ok and not caller_run.status.is_ok
    assert _parent_is(worker_run, _one(finished, f"{SERVICE}/ExecuteActivity", SpanKind.SERVER))
