"""Assembling and running the server: ``create_server(config) -> (server, port)``.

Shutdown runs in one documented order: stop the dashboard (if on) → health NOT_SERVING → drain
(no new work; activities a worker runs finish, up to ``drain_timeout``) → tell workers (their
streams end) → ``grpc stop(grace)`` → stop the engine's timer → flush telemetry.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from sessiond_client.api.v1 import session_service_pb2

from sessiond.config import ServerConfig
from sessiond.core.token import Signer
from sessiond.hostport import with_port
from sessiond.server import decoding
from sessiond.server.auth import Authenticator, CredentialsError
from sessiond.server.engine import Engine
from sessiond.server.health import HealthServicer
from sessiond.server.limits import transport_cap
from sessiond.server.servicer import SessionServicer
from sessiond.server.startup import (
    StartupError,
    authenticator,
    check_listen,
    security_warnings,
    server_credentials,
    token_keys,
)
from sessiond.store.spec import EtcdStoreSpec
from sessiond.telemetry import SessionMetrics, configure_metrics, configure_tracing

if TYPE_CHECKING:
    from sessiond.ui.http import Dashboard

log = logging.getLogger("sessiond.server")

SERVICE = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"]
SERVICE_NAME = SERVICE.full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def _grpc_options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [
        # A reconnect storm after a restart must not be shed as CANCELLED (default is 1000).
        ("grpc.server.max_pending_requests", config.max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", config.max_pending_requests),
        # gRPC shares ports (SO_REUSEPORT) by default: a second server on a port in use would start
        # and take half the connections. Off: the second one fails to start instead.
        ("grpc.so_reuseport", 0),
        # Keepalive cleans up dead TCP peers; liveness itself is the application heartbeat.
        # No max_connection_age: it would cut worker streams.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The transport cap is twice --max-message-size: a message over the limit but under the cap
        # (from a peer that did not check) still arrives, and gets a precise answer
        # (MESSAGE_TOO_LARGE, or a ResultTooLarge failure of that one activity) instead of grpc's
        # RESOURCE_EXHAUSTED that would end a worker's whole stream.
        ("grpc.max_receive_message_length", transport_cap(config.max_message_size)),
        ("grpc.max_send_message_length", transport_cap(config.max_message_size)),
    ]


class SessiondServer:
    """A bound sessiond server: ``start()``, ``stop()``, ``wait_for_termination()``."""

    def __init__(self, server: grpc.aio.Server, engine: Engine, health_servicer: HealthServicer,
                 config: ServerConfig, dashboard: Dashboard | None = None,
                 auth: Authenticator | None = None) -> None:
        self.grpc_server = server
        self.engine = engine
        self.health = health_servicer
        self.config = config
        self.dashboard = dashboard
        self.auth = auth or Authenticator(config)
        self._stopped = False
        # Set to end a drain at once (a second SIGTERM/SIGINT): what is in flight is cut.
        self.hurry = asyncio.Event()

    def reload_credentials(self) -> bool:
        """Re-read the credential files (SIGHUP). A bad file keeps the credentials in force and logs
        one ERROR line; streams and calls in progress are not touched either way."""
        try:
            credentials = self.auth.reload()
        except CredentialsError as exc:
            log.error("credentials not reloaded, the previous ones stay in force: %s", exc)
            return False
        log.info("credentials reloaded: %d tokens, %d certificate identities",
                 len(credentials.tokens), len(credentials.certificates))
        return True

    async def start(self) -> None:
        """Start serving (and the dashboard, when configured) and report SERVING. A replica first
        registers in its store (its lease and address) and fills its mirrors."""
        cluster = self.engine.cluster
        if cluster is not None:
            try:
                await cluster.start()
            except Exception as error:
                await cluster.store.client.close()
                raise StartupError(f"store: could not register this replica: {error}") from None
        await self.grpc_server.start()
        if self.dashboard is not None:
            try:
                await self.dashboard.start()
            except OSError:
                await self.grpc_server.stop(0)
                self.engine.stop()
                raise
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None, *, drain: float | None = None) -> None:
        """Stop in the documented order; idempotent.

        Args:
            grace: seconds open RPCs and streams get once the workers were told (default
                ``shutdown_grace``).
            drain: seconds activities in flight get to finish first, while no new work is taken
                (default ``drain_timeout``; 0: they end SHUTTING_DOWN at once).
        """
        if self._stopped:
            return
        self._stopped = True
        if self.dashboard is not None:
            await self.dashboard.stop()  # a read-mostly view: it goes first, so it never shows a half-stopped server
        self.health.enter_graceful_shutdown()
        cluster = self.engine.cluster
        # A replica that fences itself meanwhile stops waiting: its workers are moving already.
        await self.engine.drain(self.config.drain_timeout.total_seconds() if drain is None else drain,
                                abort=(self.hurry,) if cluster is None else (self.hurry, cluster.fenced))
        self.engine.begin_shutdown()
        await self.grpc_server.stop(self.config.shutdown_grace.total_seconds() if grace is None else grace)
        self.engine.stop()
        if self.engine.cluster is not None:
            await self.engine.cluster.close()
            await self.engine.cluster.store.close()  # deregisters the replica (its lease is revoked)

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        await self.grpc_server.wait_for_termination()


async def create_server(config: ServerConfig | None = None, *,
                        interceptors: list[Any] | None = None,
                        metrics: SessionMetrics | None = None) -> tuple[SessiondServer, int]:
    """Build and bind a server (not yet started); returns it and the bound port (for port 0).

    Raises :class:`StartupError` when the listen address or the TLS files cannot be used.
    """
    config = config or ServerConfig()
    credentials = server_credentials(config)
    check_listen(config.listen, "listen")
    auth = authenticator(config)
    loop = asyncio.get_running_loop()
    keys = token_keys(config, loop.time())
    replicated = isinstance(config.store_spec, EtcdStoreSpec)
    engine = Engine(config, metrics, signer=Signer(keys), verify_reports=auth.enabled, replicated=replicated)
    server = grpc.aio.server(interceptors=list(interceptors or []), options=_grpc_options(config))
    # Every service through the one decoding path: no request is parsed by grpc itself, and the
    # authentication guard runs in it before any request is.
    undecodable = decoding.undecodable_warning()
    decoding.add_service(server, SessionServicer(engine), SERVICE, undecodable, auth.guard)
    health_servicer = HealthServicer()
    decoding.add_service(server, health_servicer, HEALTH, undecodable, auth.guard)
    services = [SERVICE_NAME, HEALTH.full_name]
    if config.reflection != "off":
        services.append(reflection.SERVICE_NAME)
        decoding.add_service(server, reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]  # stubs lack .aio
            services), REFLECTION, undecodable, auth.guard)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as exc:  # grpc's "Failed to bind": the probe above passed, so a race or an odd address
        raise StartupError(f"listen {config.listen}: gRPC could not bind it ({exc})") from None
    if replicated:
        from sessiond.server.cluster import Cluster, open_store  # the etcd store: only replicas import it

        address = config.advertise or with_port(config.listen, port)  # (config checked listen is host:port)
        try:
            engine.cluster = Cluster(engine, await open_store(config, address))
        except StartupError:
            await server.stop(0)
            raise
        # After the store is reached: a start-up failure stays the one line the operator reads.
        log.warning("replicas on etcd are experimental (not for production yet); see README 'Running several "
                    "replicas'")
    dashboard = None
    if config.ui_listen is not None:
        from sessiond.ui.http import Dashboard  # aiohttp is imported only when the dashboard is on

        dashboard = Dashboard(engine, config, grpc_port=port, auth=auth)
    return SessiondServer(server, engine, health_servicer, config, dashboard, auth), port


async def serve(config: ServerConfig, *, warnings: Sequence[str] = ()) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (a drain first; a second signal ends the
    drain at once); SIGHUP reloads the credential files.

    ``warnings`` are logged with the security WARNINGs once the server could be built.
    Raises :class:`StartupError` (one line, for the operator) when it cannot start as configured.
    """
    if config.metrics_listen:
        check_listen(config.metrics_listen, "metrics_listen")
    try:
        tracer_provider = configure_tracing()
        metrics, stop_metrics, metrics_port = configure_metrics(config.metrics_listen)
    except (ValueError, OSError) as exc:  # an unknown exporter in OTEL_*, an unusable metrics address
        raise StartupError(str(exc)) from None
    server, port = await create_server(config, metrics=metrics)
    for warning in (*security_warnings(config, server.auth), *warnings):
        log.warning("%s", warning)
    try:
        await server.start()
    except OSError as exc:  # the dashboard's address (it says which): one line for the operator
        raise StartupError(str(exc)) from None
    if metrics_port is not None:
        log.info("metrics on http://%s/metrics", config.metrics_listen)
    if config.gc_freeze:
        # Start-up objects never die: keep them out of every future collection.
        gc.collect()
        gc.freeze()
    log.info("sessiond serving on %s (port %d), incarnation %s", config.listen, port, server.engine.incarnation)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop_or_hurry() -> None:
        if stop.is_set():
            server.hurry.set()  # a second signal: no more draining
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_or_hurry)
    loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
    waiter = asyncio.create_task(server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    watched: set[asyncio.Task[Any]] = {waiter, stopper}
    fenced = None
    cluster = server.engine.cluster
    if cluster is not None:
        fenced = asyncio.create_task(cluster.fenced.wait())
        watched.add(fenced)
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    log.info("sessiond shutting down")
    # A fenced replica does not drain: its workers are being moved to the others already.
    await server.stop(drain=0 if fenced is not None and fenced.done() else None)
    stopper.cancel()
    waiter.cancel()
    # Last step of the shutdown order: flush telemetry.
    stop_metrics()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # type: ignore[attr-defined]
    log.info("sessiond stopped")
    if cluster is not None and fenced is not None:
        if fenced.done():
            raise StartupError(f"this replica fenced itself ({cluster.fenced_reason}); start it again (a new "
                               "incarnation) once etcd is reachable")
        fenced.cancel()
