"""Metrics: a Prometheus scrape during a run sees sessions open and close, and failures by cause."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from sessiond_client.api.v1 import session_pb2, session_service_pb2_grpc

from sessiond.config import ServerConfig
from sessiond.server import create_server
from sessiond.telemetry import SessionMetrics
from tests.integration.conftest import QUEUE, ProcessFactory, Sessiond, eventually

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[-0-9.e+]+)$", re.M)


@pytest_asyncio.fixture
async def sessiond(metrics: tuple[SessionMetrics, int]) -> AsyncIterator[Sessiond]:
    """A server reporting to ``metrics`` (this module's override of the conftest fixture)."""
    server, grpc_port = await create_server(ServerConfig(listen="127.0.0.1:0"), metrics=metrics[0])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield Sessiond(server, grpc_port, channel, session_service_pb2_grpc.SessionServiceStub(channel))
    await channel.close()
    await server.stop(0)


async def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    text = await asyncio.to_thread(get)
    samples = {}
    for match in _SAMPLE.finditer(text):
        labels = frozenset(
            (k, v) for k, v in re.findall(r'(\w+)="([^"]*)"', match["labels"]) if not k.startswith("otel_scope"))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.asyncio
async def test_open_gauge_goes_up_and_down_and_a_killed_worker_counts_a_failure_with_its_cause(
    sessiond: Sessiond, spawn_worker: ProcessFactory, metrics: tuple[SessionMetrics, int],
) -> None:
    port = metrics[1]
    worker = await spawn_worker("metrics-w1", capacity=2)
    assert _value(await _scrape(port), "sessiond_workers_connected", task_queue=QUEUE) == 1

    first = await sessiond.create()
    second = await sessiond.create()
    samples = await _scrape(port)
    assert _value(samples, "sessiond_sessions_open", task_queue=QUEUE) == 2
    assert _value(samples, "sessiond_placements_total", task_queue=QUEUE) == 2

    await sessiond.complete(first.session_id)
    assert _value(await _scrape(port), "sessiond_sessions_open", task_queue=QUEUE) == 1

    worker.signal(signal.SIGKILL)
    await eventually(lambda: _failed(sessiond, second.session_id), timeout=10)
    samples = await _scrape(port)
    assert _value(samples, "sessiond_sessions_open", task_queue=QUEUE) == 0
    assert _value(samples, "sessiond_session_failures_total", task_queue=QUEUE, cause="WORKER_LOST") == 1
    assert _value(samples, "sessiond_workers_connected", task_queue=QUEUE) == 0
    assert _value(samples, "sessiond_placement_duration_seconds_count", task_queue=QUEUE) == 2


def _failed(sessiond: Sessiond, session_id: str) -> bool:
    return sessiond.server.engine.table.get(session_id).failure is not None


@pytest.mark.asyncio
async def test_resources_are_counted_per_resource_and_unplaceable_waiters_are_visible(
    sessiond: Sessiond, spawn_worker: ProcessFactory, metrics: tuple[SessionMetrics, int],
) -> None:
    port = metrics[1]
    worker = await spawn_worker("metrics-gpu", capacity=4, capacities={"gpu": 2})
    samples = await _scrape(port)
    assert _value(samples, "sessiond_resource_capacity", task_queue=QUEUE, resource="gpu") == 2
    assert _value(samples, "sessiond_resource_capacity", task_queue=QUEUE, resource="sessions") == 4

    held = await sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 2}))
    waiting = asyncio.create_task(sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 3})))
    await eventually(lambda: sessiond.waiting == 1 or None)
    samples = await _scrape(port)
    assert _value(samples, "sessiond_resource_used", task_queue=QUEUE, resource="gpu") == 2
    assert _value(samples, "sessiond_resource_used", task_queue=QUEUE, resource="sessions") == 1
    # No connected worker could ever hold 3 GPUs: the waiter is counted as unplaceable.
    assert _value(samples, "sessiond_sessions_waiting_unplaceable", task_queue=QUEUE) == 1

    waiting.cancel()
    await eventually(lambda: sessiond.waiting == 0 or None)
    await sessiond.complete(held.session_id)
    samples = await _scrape(port)
    assert _value(samples, "sessiond_resource_used", task_queue=QUEUE, resource="gpu") == 0
    assert ("sessiond_sessions_waiting_unplaceable", frozenset({("task_queue", QUEUE)})) in samples
    assert _value(samples, "sessiond_sessions_waiting_unplaceable", task_queue=QUEUE) == 0

    worker.signal(signal.SIGKILL)
    await eventually(lambda: sessiond.server.engine.table.registry.workers == {} or None, timeout=10)
    samples = await _scrape(port)
    assert _value(samples, "sessiond_resource_capacity", task_queue=QUEUE, resource="gpu") == 0


def test_resource_names_count_against_a_label_limit() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sessiond.telemetry.metrics import OVERFLOW, Metrics

    reader = InMemoryMetricReader()
    recorder = Metrics(MeterProvider(metric_readers=[reader]).get_meter("t"), label_limit=3)
    for i in range(10):
        recorder.resources_capacity("q", {f"r{i}": 1}, +1)
    data = reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "sessiond.resource.capacity" for p in m.data.data_points]
    names = sorted(str(p.attributes["resource"]) for p in points)
    assert names == sorted(["r0", "r1", "r2", OVERFLOW])
    assert next(p.value for p in points if p.attributes["resource"] == OVERFLOW) == 7
