"""OpenTelemetry spans of the client and the worker, through the OpenTelemetry API only.

Until the application installs an SDK ``TracerProvider`` these are skipped outright (one
``isinstance`` check), so an untraced application pays nothing. When tracing is on, each
call gets a CLIENT span whose W3C trace context travels in the call's metadata; the server
forwards it inside the activity task, and the worker's span for running the activity is a
child of the server's span for that ``ExecuteActivity``, itself a child of the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind, Status, StatusCode

# Resolved once (trace.get_tracer() costs ~40 us); a proxy until the application sets a provider.
_TRACER = trace.get_tracer("sessiond_client")
_SERVICE = "sessiond.v1.SessionService"
_Metadata = tuple[tuple[str, str], ...]


# A tuple, not ``ProxyTracerProvider | NoOpTracerProvider``: that builds a union on every call, and
# the worker asks once per activity.
_NOT_SET = (ProxyTracerProvider, NoOpTracerProvider)


def enabled() -> bool:
    """True once the application installed a real TracerProvider."""
    return not isinstance(trace.get_tracer_provider(), _NOT_SET)


@contextmanager
def client_span(method: str, **attributes: str) -> Iterator[Span | None]:
    """A CLIENT span for one call (None when tracing is off); errors mark it failed."""
    if not enabled():
        yield None
        return
    with _TRACER.start_as_current_span(
        f"{_SERVICE}/{method}",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": _SERVICE,
            "rpc.method": method,
            "rpc.grpc.status_code": 0,  # fail() overwrites it when the call fails
            **{f"sessiond.{k}": v for k, v in attributes.items()},
        },
    ) as span:
        yield span


def annotate(span: Span | None, **attributes: str) -> None:
    """Add ``sessiond.*`` attributes to a span from :func:`client_span`."""
    if span is not None:
        for key, value in attributes.items():
            span.set_attribute(f"sessiond.{key}", value)


def fail(span: Span | None, reason: str, message: str, code: grpc.StatusCode | None = None) -> None:
    """Mark a span failed with the error's reason, and the RPC's ``rpc.grpc.status_code`` when there is one.

    (A CLIENT span is ERROR for every code but OK, per the OpenTelemetry conventions for RPC.)
    """
    if span is not None:
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_attribute("sessiond.error_reason", reason)
        span.set_status(Status(StatusCode.ERROR, message))



def with_trace_context(metadata: _Metadata) -> _Metadata:
    """``metadata`` plus the current span's W3C trace context, when there is one."""
    if not enabled():
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return metadata + tuple(carrier.items()) if carrier else metadata


@contextmanager
def activity_span(activity_type: str, headers: Mapping[str, str], **attributes: str) -> Iterator[Span | None]:
    """The worker's span for running one activity, parented by the trace context in the task."""
    if not enabled():
        yield None
        return
    parent = propagate.extract(dict(headers))
    with _TRACER.start_as_current_span(
        f"activity {activity_type}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"sessiond.activity_type": activity_type, **{f"sessiond.{k}": v for k, v in attributes.items()}},
    ) as span:
        yield span
