"""Metrics: a Prometheus scrape during a run sees sessions open and close, and failures by cause."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from sessiond_client.api.v1 import session_service_pb2_grpc

from sessiond.config import ServerConfig
from sessiond.server import create_server
from sessiond.telemetry import SessionMetrics, configure_metrics
from tests.integration.conftest import QUEUE, ProcessFactory, Sessiond, eventually

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[-0-9.e+]+)$", re.M)


@pytest.fixture
def metrics() -> Iterator[tuple[SessionMetrics, int]]:
    """Metrics exported on a Prometheus endpoint bound to a free port: (metrics, port)."""
    session_metrics, stop_metrics, port = configure_metrics("127.0.0.1:0")
    assert port is not None
    yield session_metrics, port
    stop_metrics()


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
