"""Tracing set-up from the standard ``OTEL_*`` environment variables, and server spans.

``OTEL_TRACES_EXPORTER`` picks exporters (``otlp``, ``console``, comma-separated); unset or
``none`` leaves the no-op tracer in place and :func:`server_span` does nothing at all.
``OTEL_EXPORTER_OTLP_PROTOCOL`` picks the OTLP transport (``grpc`` or ``http/protobuf``). The
sampler (``OTEL_TRACES_SAMPLER``), service name and OTLP endpoint are read by the SDK itself.

Server spans are hand-written rather than OpenTelemetry's grpc instrumentation: that
interceptor breaks aio stream handlers (upstream #3066) and costs about 100 µs per RPC even
unsampled; the measured comparison is in bench/RESULTS.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sessiond.telemetry.otlp import otlp_protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

_state = {"enabled": False}
TRACER_NAME = "sessiond"
# Resolved once: trace.get_tracer() costs ~40 us per call. Obtained before any provider is set it
# is a proxy that binds to the real provider on first use after set_tracer_provider().
_TRACER = trace.get_tracer(TRACER_NAME)
PROPAGATION_KEYS = ("traceparent", "tracestate")


def tracing_enabled() -> bool:
    """True when an exporter was configured (spans are real)."""
    return _state["enabled"]


def configure_tracing(service_name: str = "sessiond", env: Mapping[str, str] | None = None) -> object | None:
    """Install an SDK TracerProvider when ``OTEL_TRACES_EXPORTER`` names exporters.

    Returns the provider (call ``shutdown()`` on it to flush), or None when tracing stays off.
    """
    env = os.environ if env is None else env
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)}))
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            exporter = _otlp_span_exporter(env)
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable()
    return provider


def _otlp_span_exporter(env: Mapping[str, str]) -> SpanExporter:
    """The OTLP span exporter for ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (grpc or http/protobuf)."""
    if otlp_protocol(env, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter()


def enable(on: bool = True) -> None:
    """Turn server spans on or off (tests install their own provider, then call this)."""
    _state["enabled"] = on


@contextmanager
def server_span(method: str, metadata: Any) -> Iterator[Span | None]:
    """A SERVER span for one RPC, child of the trace context the caller sent in metadata."""
    if not _state["enabled"]:
        yield None
        return
    carrier = {k: v for k, v in (metadata or ()) if k in PROPAGATION_KEYS and isinstance(v, str)}
    parent = propagate.extract(carrier) if carrier else None
    with _TRACER.start_as_current_span(
        f"sessiond.v1.SessionService/{method}", context=parent, kind=SpanKind.SERVER,
        record_exception=False, set_status_on_exception=False,
        # rpc.grpc.status_code starts as OK (set with the others, which is cheaper than a set_attribute
        # after the call); mark_status overwrites it when the RPC fails.
        attributes={"rpc.system": "grpc", "rpc.service": "sessiond.v1.SessionService", "rpc.method": method,
                    "rpc.grpc.status_code": 0},
    ) as span:
        yield span


# OpenTelemetry semantic conventions for RPC (gRPC): a SERVER span is ERROR only for the codes that
# mean the server failed; the others (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, ...) are the
# caller's doing and leave the server span's status unset. A CLIENT span is ERROR for any code but OK.
SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})


def status_code_number(code: grpc.StatusCode) -> int:
    """The numeric gRPC status code (``rpc.grpc.status_code``)."""
    number: int = code.value[0]
    return number


def mark_status(span: Span | None, code: grpc.StatusCode, reason: str = "", message: str = "") -> None:
    """Record an RPC's outcome on its SERVER span: ``rpc.grpc.status_code``, and ERROR per the conventions."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", status_code_number(code))
    if reason:
        span.set_attribute("sessiond.error_reason", reason)
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, message or code.name))


def annotate(**attributes: str) -> None:
    """Set ``sessiond.<name>`` attributes on the current span (no-op when not recording)."""
    if not _state["enabled"]:  # no server span then: skip OpenTelemetry's context lookup (every activity)
        return
    span = trace.get_current_span()
    if span.is_recording():
        for key, value in attributes.items():
            span.set_attribute(f"sessiond.{key}", value)


def add_event(name: str, **attributes: str) -> None:
    """Add an event (placement, waiting, failure) to the current span."""
    if not _state["enabled"]:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, {f"sessiond.{k}": v for k, v in attributes.items()})


def outgoing_headers(headers: dict[str, str], metadata: Any) -> dict[str, str]:
    """Trace context for an activity task: the current server span's, or else the caller's as received."""
    if _state["enabled"]:
        propagate.inject(headers)
        return headers
    for key, value in metadata or ():
        if key in PROPAGATION_KEYS and isinstance(value, str):
            headers.setdefault(key, value)
    return headers
