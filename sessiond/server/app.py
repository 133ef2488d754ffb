"""Assembling and running the server: ``create_server(config) -> (server, port)``.

Shutdown runs in one documented order: stop the dashboard (if on) → health NOT_SERVING → tell
workers (their streams end) → ``grpc stop(grace)`` → stop the engine's timer → flush telemetry.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sessiond_client.api.v1 import session_service_pb2, session_service_pb2_grpc

from sessiond.config import ServerConfig
from sessiond.server.auth import TokenAuthInterceptor
from sessiond.server.engine import Engine
from sessiond.server.servicer import SessionServicer
from sessiond.telemetry import SessionMetrics, configure_metrics, configure_tracing

if TYPE_CHECKING:
    from sessiond.ui.http import Dashboard

log = logging.getLogger("sessiond.server")

SERVICE_NAME = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name


def _grpc_options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [
        # A reconnect storm after a restart must not be shed as CANCELLED (default is 1000).
        ("grpc.server.max_pending_requests", config.max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", config.max_pending_requests),
        # Keepalive cleans up dead TCP peers; liveness itself is the application heartbeat.
        # No max_connection_age: it would cut worker streams.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
    if config.tls_client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=config.tls_client_ca.read_bytes(),
                                       require_client_auth=True)


class SessiondServer:
    """A bound sessiond server: ``start()``, ``stop()``, ``wait_for_termination()``."""

    def __init__(self, server: grpc.aio.Server, engine: Engine, health_servicer: Any,
                 config: ServerConfig, dashboard: Dashboard | None = None) -> None:
        self.grpc_server = server
        self.engine = engine
        self.health = health_servicer
        self.config = config
        self.dashboard = dashboard
        self._stopped = False

    async def start(self) -> None:
        """Start serving (and the dashboard, when configured) and report SERVING."""
        await self.grpc_server.start()
        if self.dashboard is not None:
            try:
                await self.dashboard.start()
            except OSError:
                await self.grpc_server.stop(0)
                self.engine.stop()
                raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Stop in the documented order; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.dashboard is not None:
            await self.dashboard.stop()  # a read-mostly view: it goes first, so it never shows a half-stopped server
        await self.health.enter_graceful_shutdown()
        self.engine.begin_shutdown()
        await self.grpc_server.stop(self.config.shutdown_grace.total_seconds() if grace is None else grace)
        self.engine.stop()

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        await self.grpc_server.wait_for_termination()


async def create_server(config: ServerConfig | None = None, *,
                        interceptors: list[Any] | None = None,
                        metrics: SessionMetrics | None = None) -> tuple[SessiondServer, int]:
    """Build and bind a server (not yet started); returns it and the bound port (for port 0)."""
    config = config or ServerConfig()
    engine = Engine(config, metrics)
    chain: list[Any] = list(interceptors or [])
    if config.worker_token or config.caller_token:
        chain.insert(0, TokenAuthInterceptor(worker_token=config.worker_token, caller_token=config.caller_token))
    server = grpc.aio.server(interceptors=chain, options=_grpc_options(config))
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(engine), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lack .aio
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    credentials = _credentials(config)
    if credentials is None:
        port = server.add_insecure_port(config.listen)
    else:
        port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise OSError(f"could not bind {config.listen}")
    dashboard = None
    if config.ui_listen is not None:
        from sessiond.ui.http import Dashboard  # aiohttp is imported only when the dashboard is on

        dashboard = Dashboard(engine, config, grpc_port=port)
    return SessiondServer(server, engine, health_servicer, config, dashboard), port


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    tracer_provider = configure_tracing()
    metrics, stop_metrics, metrics_port = configure_metrics(config.metrics_listen)
    server, port = await create_server(config, metrics=metrics)
    await server.start()
    if metrics_port is not None:
        log.info("metrics on http://%s/metrics", config.metrics_listen)
    if config.gc_freeze:
        # Start-up objects never die: keep them out of every future collection.
        gc.collect()
        gc.freeze()
    log.info("sessiond serving on %s (port %d), incarnation %s", config.listen, port, server.engine.incarnation)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("sessiond shutting down")
    await server.stop()
    stopper.cancel()
    waiter.cancel()
    # Last step of the shutdown order: flush telemetry.
    stop_metrics()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # type: ignore[attr-defined]
    log.info("sessiond stopped")
