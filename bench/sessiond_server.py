"""sessiond for the tracing scenario: ``sessiond serve`` plus a chosen tracing set-up, as its own process.

``--tracing off``   no provider, spans off: the same as ``python -m sessiond serve``.
``--tracing ours``  SDK TracerProvider (always_on sampler, BatchSpanProcessor, an exporter that drops
                    every span) and sessiond's hand-written server spans (``tracing.enable()``).
``--tracing otel``  the same provider, our spans off, OpenTelemetry's ``aio_server_interceptor()`` instead
                    (stream methods excluded with its ``filters``: it breaks or mis-times them, upstream #3066).

On SIGTERM it stops and prints ``{"event": "spans", "exported": N}`` so the run can check that spans
were really made. The other scenarios run the real CLI (``python -m sessiond serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from bench.common import emit
from sessiond import logs
from sessiond.config import ServerConfig
from sessiond.server import create_server
from sessiond.telemetry import tracing


class DropExporter(SpanExporter):
    """Counts spans and drops them: measures the cost of making spans, not of any exporter."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def _otel_interceptor() -> Any:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    streams = filters.any_of(
        filters.method_name("WorkerHeartbeat"), filters.method_name("WatchSession"),
        filters.service_name("grpc.health.v1.Health"),
        filters.service_name("grpc.reflection.v1alpha.ServerReflection"),
    )
    return aio_server_interceptor(filter_=filters.negate(streams))


async def _serve(port: int, mode: str) -> None:
    provider: TracerProvider | None = None
    exporter = DropExporter()
    if mode != "off":
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    tracing.enable(mode == "ours")
    interceptors = [_otel_interceptor()] if mode == "otel" else []
    config = ServerConfig(listen=f"127.0.0.1:{port}", log_level="WARNING")
    server, bound = await create_server(config, interceptors=interceptors)
    await server.start()
    if config.gc_freeze:
        gc.collect()
        gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("ready", port=bound, pid=os.getpid(), tracing=mode)
    await stop.wait()
    await server.stop(0)
    if provider is not None:
        provider.force_flush()
        provider.shutdown()
    emit("spans", exported=exporter.exported)


def main(argv: list[str] | None = None) -> int:
    """Run sessiond with the chosen tracing set-up until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench.sessiond_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tracing", choices=("off", "ours", "otel"), default="off")
    args = parser.parse_args(argv)
    logs.configure("WARNING", "text")
    asyncio.run(_serve(args.port, args.tracing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
