"""Session metrics on the OpenTelemetry metrics API, exported to Prometheus and/or OTLP.

The engine calls a :class:`SessionMetrics`; when no exporter is configured it gets
:class:`NoMetrics`, whose methods do nothing.

Label values that callers or workers choose (task queue, activity type, resource name) are
bounded: the first ``label_limit`` distinct values of each label are kept, later ones are reported
as ``_other``.
Without the bound, a caller making up names would create series without end (30 made-up activity
names made 570 series). RPC metrics follow the OpenTelemetry semantic conventions
(``rpc.server.duration`` in milliseconds, with ``rpc.method`` and ``rpc.grpc.status_code``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import grpc
from opentelemetry.metrics import CallbackOptions, Meter, Observation, UpDownCounter

from sessiond.hostport import parse_host_port
from sessiond.telemetry.otlp import otlp_protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# rpc.server.duration is in milliseconds (semantic conventions); these are the SDK's default boundaries.
_RPC_MS_BUCKETS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
SERVICE = "sessiond.v1.SessionService"
#: The label value that stands for every value past a label's limit.
OVERFLOW = "_other"
DEFAULT_LABEL_LIMIT = 100


class BoundedValues:
    """Admits the first ``limit`` distinct values of one label; later ones become :data:`OVERFLOW`.

    An admitted value stays admitted, so +1/-1 pairs of an up-down counter always meet in one series.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("label limit must be at least 1")
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        """``value`` itself if admitted (now or before), else :data:`OVERFLOW`."""
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OVERFLOW


class SessionMetrics(Protocol):
    """What the engine reports."""

    def session_placed(self, task_queue: str) -> None: ...
    def session_ended(self, task_queue: str, cause: str | None) -> None: ...
    def placement_latency(self, task_queue: str, seconds: float) -> None: ...
    def waiters(self, task_queue: str, delta: int) -> None: ...
    def workers(self, task_queue: str, delta: int) -> None: ...
    def activity_done(self, activity_type: str, seconds: float, outcome: str) -> None: ...
    def creation_rejected(self, task_queue: str, reason: str) -> None: ...
    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None: ...
    def resources_capacity(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None: ...
    def resources_used(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None: ...
    def observe_unplaceable(self, source: Callable[[], Mapping[str, int]]) -> None: ...

    @property
    def enabled(self) -> bool: ...


class NoMetrics:
    """Metrics off: every method is a no-op."""

    @property
    def enabled(self) -> bool:
        """False: callers skip the work of measuring."""
        return False

    def creation_rejected(self, task_queue: str, reason: str) -> None:
        """No-op."""

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """No-op."""

    def resources_capacity(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None:
        """No-op."""

    def resources_used(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None:
        """No-op."""

    def observe_unplaceable(self, source: Callable[[], Mapping[str, int]]) -> None:
        """No-op."""

    def session_placed(self, task_queue: str) -> None:
        """No-op."""

    def session_ended(self, task_queue: str, cause: str | None) -> None:
        """No-op."""

    def placement_latency(self, task_queue: str, seconds: float) -> None:
        """No-op."""

    def waiters(self, task_queue: str, delta: int) -> None:
        """No-op."""

    def workers(self, task_queue: str, delta: int) -> None:
        """No-op."""

    def activity_done(self, activity_type: str, seconds: float, outcome: str) -> None:
        """No-op."""


class Metrics:
    """The instruments: open sessions, waiters, workers, placements, failures, latencies."""

    def __init__(self, meter: Meter, *, label_limit: int = DEFAULT_LABEL_LIMIT) -> None:
        self._meter = meter
        self._queue = BoundedValues(label_limit)
        self._activity_type = BoundedValues(label_limit)
        self._resource = BoundedValues(label_limit)
        self._unplaceable_seen: set[str] = set()
        self._rpc_attributes: dict[tuple[str, grpc.StatusCode], dict[str, str | int]] = {}
        self._open = meter.create_up_down_counter(
            "sessiond.sessions.open", unit="{session}", description="Sessions currently OPEN")
        self._waiting = meter.create_up_down_counter(
            "sessiond.sessions.waiting", unit="{request}", description="Creates/Recreates waiting for capacity")
        self._workers = meter.create_up_down_counter(
            "sessiond.workers.connected", unit="{worker}", description="Connected worker streams")
        self._placements = meter.create_counter(
            "sessiond.placements", unit="{session}", description="Sessions placed on a worker")
        self._failures = meter.create_counter(
            "sessiond.session.failures", unit="{session}", description="Sessions that FAILED, by cause")
        self._placement_latency = meter.create_histogram(
            "sessiond.placement.duration", unit="s", description="Create/Recreate request to placement",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS)
        self._activity_latency = meter.create_histogram(
            "sessiond.activity.duration", unit="s", description="ExecuteActivity, request to outcome",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS)
        self._rejected = meter.create_counter(
            "sessiond.creation.rejected", unit="{request}",
            description="Creates/Recreates answered without a session, by reason (CREATION_TIMEOUT, NO_CAPACITY, "
                        "WORKER_UNAVAILABLE, TOO_MANY_WAITERS, ...)")
        self._rpc_duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Duration of unary RPCs, by method and status code",
            explicit_bucket_boundaries_advisory=_RPC_MS_BUCKETS)
        self._capacity = meter.create_up_down_counter(
            "sessiond.resource.capacity", unit="{amount}",
            description="What connected workers can hold, by task queue and resource (sessions = slots)")
        self._used = meter.create_up_down_counter(
            "sessiond.resource.used", unit="{amount}",
            description="What open sessions hold, by task queue and resource (detached sessions keep theirs)")

    @property
    def enabled(self) -> bool:
        """True: measurements are recorded."""
        return True

    def creation_rejected(self, task_queue: str, reason: str) -> None:
        """A Create/Recreate ended without a session (timed out, no capacity, too many waiters, ...)."""
        self._rejected.add(1, {"task_queue": self._queue(task_queue), "reason": reason})

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A unary RPC ended with ``code`` after ``seconds``."""
        attributes = self._rpc_attributes.get((method, code))
        if attributes is None:  # methods x codes: a small, fixed set
            attributes = self._rpc_attributes[(method, code)] = {
                "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                "rpc.grpc.status_code": code.value[0]}
        self._rpc_duration.record(seconds * 1000.0, attributes)

    def resources_capacity(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None:
        """A worker joined (+1) or left (-1) with these capacities."""
        self._add_amounts(self._capacity, task_queue, amounts, sign)

    def resources_used(self, task_queue: str, amounts: Mapping[str, int], sign: int) -> None:
        """A session started (+1) or stopped (-1) holding these amounts."""
        self._add_amounts(self._used, task_queue, amounts, sign)

    def _add_amounts(self, counter: UpDownCounter, task_queue: str, amounts: Mapping[str, int], sign: int) -> None:
        queue = self._queue(task_queue)
        for name, amount in amounts.items():
            counter.add(sign * amount, {"task_queue": queue, "resource": self._resource(name)})

    def observe_unplaceable(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Report ``source()`` — waiting Creates no connected worker could ever hold, by task queue —
        at each collection, as the gauge ``sessiond.sessions.waiting.unplaceable``. ``source`` is
        called from the exporter's thread."""
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            counts: dict[str, int] = {}
            for queue, count in source().items():
                label = self._queue(queue)
                counts[label] = counts.get(label, 0) + count
            # A queue that had some reports 0 afterwards, rather than vanishing (bounded by the label limit).
            self._unplaceable_seen.update(counts)
            return [Observation(counts.get(q, 0), {"task_queue": q}) for q in sorted(self._unplaceable_seen)]

        self._meter.create_observable_gauge(
            "sessiond.sessions.waiting.unplaceable", callbacks=[observe], unit="{request}",
            description="Waiting Creates that no connected worker could ever hold (labels or capacity): "
                        "they wait for such a worker to join")

    def session_placed(self, task_queue: str) -> None:
        """A session was placed."""
        attrs = {"task_queue": self._queue(task_queue)}
        self._open.add(1, attrs)
        self._placements.add(1, attrs)

    def session_ended(self, task_queue: str, cause: str | None) -> None:
        """A session left OPEN; ``cause`` is set when it FAILED."""
        queue = self._queue(task_queue)
        self._open.add(-1, {"task_queue": queue})
        if cause is not None:
            self._failures.add(1, {"task_queue": queue, "cause": cause})

    def placement_latency(self, task_queue: str, seconds: float) -> None:
        """Time from a Create/Recreate request to its placement."""
        self._placement_latency.record(seconds, {"task_queue": self._queue(task_queue)})

    def waiters(self, task_queue: str, delta: int) -> None:
        """A waiter started (+1) or ended (-1)."""
        self._waiting.add(delta, {"task_queue": self._queue(task_queue)})

    def workers(self, task_queue: str, delta: int) -> None:
        """A worker connected (+1) or left (-1)."""
        self._workers.add(delta, {"task_queue": self._queue(task_queue)})

    def activity_done(self, activity_type: str, seconds: float, outcome: str) -> None:
        """An ExecuteActivity ended: ``outcome`` is ok, failed, or an error reason."""
        self._activity_latency.record(seconds, {"activity_type": self._activity_type(activity_type),
                                                "outcome": outcome})


def configure_metrics(metrics_listen: str | None, env: Mapping[str, str] | None = None, *,
                      label_limit: int = DEFAULT_LABEL_LIMIT,
                      ) -> tuple[SessionMetrics, Callable[[], None], int | None]:
    """Metrics from ``--metrics-listen`` (Prometheus) and ``OTEL_METRICS_EXPORTER`` (otlp, console).

    Returns (metrics, shutdown, bound Prometheus port or None).
    """
    env = os.environ if env is None else env
    names = [n.strip() for n in env.get("OTEL_METRICS_EXPORTER", "none").split(",") if n.strip() not in ("", "none")]
    if not metrics_listen and not names:
        return NoMetrics(), lambda: None, None
    unknown = [n for n in names if n not in ("console", "otlp")]
    if unknown:  # before anything starts (the Prometheus endpoint below)
        raise ValueError(f"OTEL_METRICS_EXPORTER: unknown exporter {unknown[0]!r} (otlp, console or none)")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    readers: list[MetricReader] = []
    stoppers: list[Callable[[], None]] = []
    bound: int | None = None
    if metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = parse_host_port(metrics_listen, "metrics_listen", allow_port_zero=True)
        http_server, _thread = start_http_server(port, addr=host)
        bound = int(http_server.server_port)
        stoppers.append(http_server.shutdown)
        readers.append(PrometheusMetricReader())
    for name in names:
        exporter: MetricExporter
        if name == "console":
            exporter = ConsoleMetricExporter()
        else:
            exporter = otlp_metric_exporter(env)
        readers.append(PeriodicExportingMetricReader(exporter))
    provider = MeterProvider(metric_readers=readers,
                             resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "sessiond")}))

    def shutdown() -> None:
        provider.shutdown()
        for stop in stoppers:
            stop()

    return Metrics(provider.get_meter("sessiond"), label_limit=label_limit), shutdown, bound


def otlp_metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    """The OTLP metric exporter for ``OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL`` (grpc or http/protobuf)."""
    if otlp_protocol(env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()
