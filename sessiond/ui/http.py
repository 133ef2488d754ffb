"""The dashboard's HTTP side: an aiohttp application on the server's own event loop.

Why aiohttp: the dashboard must run in the sessiond process, on the loop that runs grpc.aio
and the engine (it reads the engine's tables directly, with no locks and no RPC), and it must be
robust against whatever a browser, a script or a port scanner sends. aiohttp is the
mature asyncio HTTP/1.1 server (C parser, header and body limits, keep-alive, graceful
shutdown, a test client) and costs one pinned dependency; a hand-written server on asyncio
streams would have to re-earn all of that.

Routes (all JSON under ``/api/v1``; documented in the README):

====================================================  ==========================================
``GET /``                                             the page (static files, no data in them)
``GET /api/v1/overview``                              totals, task queues, failure timeline
``GET /api/v1/workers``                               one page of workers
``GET /api/v1/sessions``                              one page of sessions (filters)
``GET /api/v1/sessions/{id}``                         one session
``POST /api/v1/sessions/{id}/complete``               complete a session (operator action)
``GET /api/v1/failures``                              the failure timeline and latest failures
====================================================  ==========================================
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sessiond import __version__
from sessiond.config import ServerConfig
from sessiond.core.errors import InvalidArgumentError, SessionError
from sessiond.core.model import FailureCause, SessionState
from sessiond.hostport import parse_host_port, with_port
from sessiond.logs import RateLimitedWarning
from sessiond.server import validate
from sessiond.server.auth import Authenticator
from sessiond.server.engine import Engine
from sessiond.server.errors import STATUS_CODES
from sessiond.ui import POLL_INTERVAL_MS, views
from sessiond.ui.access import Access, Verdict

log = logging.getLogger("sessiond.ui")

# The overview is built at most this often, however many pages poll it (they share one snapshot).
SNAPSHOT_TTL = 0.5
DEFAULT_PAGE_SIZE = 50
MAX_FAILURES = 200
# Requests carry no bodies worth more (the one POST has none).
MAX_BODY_BYTES = 16 * 1024
SHUTDOWN_TIMEOUT = 1.0

_STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# gRPC status code name -> HTTP status, for domain errors (the error table stays the one in sessiond.server.errors).
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504, "ABORTED": 409,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, reason: str, message: str, **headers: str) -> web.Response:
    body = {"error": {"status": status, "reason": reason, "message": message}}
    return web.json_response(body, status=status, headers=headers or None)


def _domain_error(error: SessionError) -> web.Response:
    code = STATUS_CODES.get(type(error))
    status = _HTTP_STATUS.get(code.name, 500) if code is not None else 500
    return _error(status, error.reason, error.message)


def _json(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")


class _PeerErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, except that a malformed request (an over-long header, a bad request line)
    is what a peer sent, not a fault of ours: a WARNING without traceback at most once a minute, with
    the count of those in between, instead of one ERROR with a traceback per request."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._malformed = RateLimitedWarning(log, "dashboard: malformed HTTP request", interval=60.0)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._malformed.warn(f"({exc_info.code} {exc_info.message})")
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class _Snapshot:
    """The overview, rebuilt at most every :data:`SNAPSHOT_TTL` seconds and shared by every viewer."""

    def __init__(self, build: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._build = build
        self._value: dict[str, Any] | None = None
        self._at = -float("inf")
        self._pending: asyncio.Task[dict[str, Any]] | None = None

    async def get(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._value is not None and loop.time() - self._at < SNAPSHOT_TTL:
            return self._value
        if self._pending is None:
            self._pending = loop.create_task(self._refresh())
        # Shielded: one viewer going away must not cancel the build the others wait for.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> dict[str, Any]:
        try:
            value = await self._build()
            self._value, self._at = value, asyncio.get_running_loop().time()
            return value
        finally:
            self._pending = None


class Dashboard:
    """The operator dashboard of one server: ``await start()``, ``port``, ``await stop()``."""

    def __init__(self, engine: Engine, config: ServerConfig, *, grpc_port: int | None = None,
                 auth: Authenticator | None = None) -> None:
        """Args:
            engine: the server's engine (the dashboard reads its tables on the same loop).
            config: the server's configuration (``ui_listen``).
            grpc_port: the gRPC port actually bound (shown on the page when ``listen`` asked for port 0).
            auth: the server's authenticator (default: one for ``config``'s credentials).
        """
        if config.ui_listen is None:
            raise ValueError("the dashboard needs ui_listen")
        self.engine = engine
        self.config = config
        self.host, self._port = parse_host_port(config.ui_listen, "ui_listen", allow_port_zero=True)
        self.access = Access(auth or Authenticator(config), self.host)
        self.port: int | None = None
        self._grpc_address = config.listen
        if grpc_port is not None:
            with contextlib.suppress(ValueError):  # unix:... and the like are shown as given
                self._grpc_address = with_port(config.listen, grpc_port)
        self._started = time.time()
        self._started_mono = engine.now()
        self._runner: web.AppRunner | None = None
        self._static = {name: importlib.resources.files("sessiond.ui").joinpath("static", name).read_bytes()
                        for name in _STATIC}
        self._snapshot = _Snapshot(self._overview)
        self.app = self._make_app()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                               logger=_PeerErrorLog())
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"dashboard: cannot listen on {self.config.ui_listen}: {reason}") from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("dashboard on %s (auth: %s)", self.url, self.access.mode)
        if not self.access.protected and not self.access.loopback:
            log.warning("the dashboard on %s has no token: anyone who can reach it can list and complete every "
                        "session (give the operator role a credential: --caller-token-file or --tokens-file; or bind "
                        "--ui-listen to 127.0.0.1)", self.config.ui_listen)

    @property
    def url(self) -> str:
        """The page's address (after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        """Stop serving (open requests get :data:`SHUTDOWN_TIMEOUT`); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ----------------------------------------------------------------- application

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/api/v1/overview", self._get_overview)
        app.router.add_get("/api/v1/workers", self._get_workers)
        app.router.add_get("/api/v1/sessions", self._get_sessions)
        app.router.add_get("/api/v1/sessions/{session_id}", self._get_session)
        app.router.add_post("/api/v1/sessions/{session_id}/complete", self._complete)
        app.router.add_get("/api/v1/failures", self._get_failures)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host and origin guards, the operator check on the API, errors as JSON, security headers."""
        api = request.path.startswith("/api/")
        response = await self._guarded(request, handler, api)
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        headers["Content-Security-Policy"] = _CSP
        headers["Cache-Control"] = "no-store" if api else "no-cache"
        return response

    async def _guarded(self, request: web.Request, handler: Handler, api: bool) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.access.host_allowed(host):
            return _error(421, "MISDIRECTED_REQUEST", "this dashboard answers only requests to a loopback host name")
        if api:
            if not self.access.origin_allowed(request.headers.get("Origin"), request.scheme, host):
                return _error(403, "CROSS_ORIGIN", "cross-origin requests are refused")
            verdict = self.access.authorize(request.headers.get("Authorization"))
            if verdict is Verdict.UNAUTHENTICATED:
                return _error(401, "UNAUTHENTICATED", "missing or invalid bearer token",
                              **{"WWW-Authenticate": 'Bearer realm="sessiond"'})
            if verdict is Verdict.FORBIDDEN:
                return _error(403, "PERMISSION_DENIED", "this credential does not have the operator role")
        try:
            return await handler(request)
        except SessionError as error:
            return _domain_error(error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if not api:
                return web.Response(status=exc.status, text=exc.text or exc.reason)
            return _error(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason)

    # ----------------------------------------------------------------- the page

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type=_STATIC["index.html"], charset="utf-8")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=_STATIC[name], charset="utf-8")

    # ----------------------------------------------------------------- the API

    def _server_info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "incarnation": self.engine.incarnation,
            "grpc_listen": self._grpc_address,
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started)),
            "uptime_s": round(self.engine.now() - self._started_mono, 3),
            "auth": self.access.mode,
            "poll_interval_ms": POLL_INTERVAL_MS,
            "retention_s": self.config.retention.total_seconds(),
        }

    async def _overview(self) -> dict[str, Any]:
        return await views.overview(self.engine, self._server_info())

    async def _get_overview(self, request: web.Request) -> web.Response:
        return _json(await self._snapshot.get())

    async def _get_workers(self, request: web.Request) -> web.Response:
        query = request.query
        size, after = validate.worker_page(_int(query, "page_size", DEFAULT_PAGE_SIZE), query.get("page_token", ""))
        page, more = self.engine.table.workers(task_queue=_name(query, "task_queue"), after=after, limit=size)
        now = self.engine.now()
        return _json({"workers": [views.worker_json(w, now, self.engine.clock) for w in page],
                      "next_page_token": validate.worker_token(more)})

    async def _get_sessions(self, request: web.Request) -> web.Response:
        query = request.query
        size, after = validate.page(_int(query, "page_size", DEFAULT_PAGE_SIZE), query.get("page_token", ""))
        wanted = views.SessionFilter(
            task_queue=_name(query, "task_queue"), owner=_name(query, "owner"),
            state=_enum(query, "state", SessionState), cause=_enum(query, "cause", FailureCause),
            worker_id=_name(query, "worker_id"))
        return _json(views.session_page(self.engine, wanted, after, size))

    async def _get_session(self, request: web.Request) -> web.Response:
        session = self.engine.get_session(validate.name(request.match_info["session_id"], "session_id", required=True))
        return _json({"session": views.session_json(session, self.engine.now(), self.engine.clock)})

    async def _complete(self, request: web.Request) -> web.Response:
        session_id = validate.name(request.match_info["session_id"], "session_id", required=True)
        before = self.engine.get_session(session_id).state
        session = self.engine.complete_session(session_id)
        if before is SessionState.OPEN:
            log.info("session completed from the dashboard",
                     extra={"session_id": session_id, "task_queue": session.task_queue, "remote": request.remote})
        return _json({"session": views.session_json(session, self.engine.now(), self.engine.clock),
                      "changed": before is SessionState.OPEN})

    async def _get_failures(self, request: web.Request) -> web.Response:
        limit = min(_int(request.query, "limit", MAX_FAILURES), MAX_FAILURES)
        return _json(views.failures_json(self.engine, self.engine.now(), limit))


# --------------------------------------------------------------------- query parameters


def _name(query: Any, field: str) -> str:
    return validate.name(query.get(field, ""), field, required=False)


def _int(query: Any, field: str, default: int) -> int:
    raw = query.get(field, "")
    if raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidArgumentError(field, "must be a whole number")
    return int(raw)


def _enum(query: Any, field: str, kind: type[SessionState] | type[FailureCause]) -> Any:
    raw = query.get(field, "")
    if raw == "":
        return None
    try:
        return kind[raw.upper()]
    except KeyError:
        names = ", ".join(m.name.lower() for m in kind)
        raise InvalidArgumentError(field, f"must be one of {names}") from None


__all__ = ["Dashboard"]
