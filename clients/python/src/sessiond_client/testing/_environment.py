"""An in-process sessiond server plus workers, for users' tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sessiond_client._client import SessionClient
from sessiond_client._converter import PayloadConverter
from sessiond_client._worker import SessionWorker

_MISSING_SERVER = (
    "sessiond_client.testing.SessiondEnvironment runs an in-process sessiond server, which is the separate "
    "'sessiond' distribution: install it with pip install 'sessiond-client[testing]'"
)
_names = itertools.count(1)

Activities = Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]]


@dataclass
class _Running:
    worker: SessionWorker
    task: asyncio.Task[None]


class SessiondEnvironment:
    """A sessiond server in this process, workers for your activities, and a client connected to it.

    Use :meth:`start` as an async context manager; everything stops when the block exits. Time is
    real (sessiond has no time skipping): keep test timeouts short with the server options, for
    example ``heartbeat_timeout=timedelta(seconds=1)``.
    """

    def __init__(self, server: Any, target: str, client: SessionClient, task_queue: str,
                 converter: PayloadConverter | None, worker_token: str | None = None) -> None:
        """Built by :meth:`start`."""
        self._server = server
        self._target = target
        self._client = client
        self._task_queue = task_queue
        self._converter = converter
        self._worker_token = worker_token
        self._workers: list[_Running] = []

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        activities: Activities | None = None,
        *,
        task_queue: str | None = None,
        workers: int = 1,
        max_concurrent_sessions: int = 1000,
        converter: PayloadConverter | None = None,
        capacities: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
        **server_options: Any,
    ) -> AsyncIterator[SessiondEnvironment]:
        """Start a server on a free loopback port, ``workers`` workers running ``activities``, and a client.

        Args:
            activities: The activities the workers run (as for ``SessionWorker``); ``None`` starts
                no worker (add them with :meth:`start_worker`).
            task_queue: The queue of those workers; default: a fresh name (see :attr:`task_queue`).
            workers: How many workers to start on it.
            max_concurrent_sessions: Each worker's session limit.
            converter: Payload converter of the client and the workers.
            capacities: Each worker's resources besides sessions, e.g. ``{"gpu": 2}``.
            labels: Each worker's labels, e.g. ``{"zone": "a"}`` (give workers different ones with
                :meth:`start_worker`).
            **server_options: ``sessiond.config.ServerConfig`` fields, for example
                ``heartbeat_timeout=timedelta(seconds=1)`` or ``creation_timeout=timedelta(seconds=2)``.
                With ``caller_token``/``worker_token`` the client and the workers present them (for
                other principals, connect your own ``SessionClient(env.target, auth_token=...)``).

        Raises:
            ModuleNotFoundError: The ``sessiond`` server package is not installed.
        """
        try:
            from sessiond.config import ServerConfig
            from sessiond.server import create_server
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(_MISSING_SERVER, name=exc.name) from exc
        # A test server is never a restart: no recovery window, so an unknown id is NOT_FOUND at once.
        config = ServerConfig(**{"listen": "127.0.0.1:0", "shutdown_grace": timedelta(0), "drain_timeout": timedelta(0),
                                 "recovery_window": timedelta(0), **server_options})
        server, port = await create_server(config)
        await server.start()
        target = f"127.0.0.1:{port}"
        env: SessiondEnvironment | None = None
        try:
            client = await SessionClient.connect(target, converter=converter, default_rpc_timeout=10,
                                                 auth_token=config.caller_token)
            env = cls(server, target, client, task_queue or f"test-{next(_names)}", converter, config.worker_token)
            if activities is not None:
                activity_list = activities if isinstance(activities, Mapping) else list(activities)
                for _ in range(workers):
                    await env.start_worker(activity_list, max_concurrent_sessions=max_concurrent_sessions,
                                           capacities=capacities, labels=labels)
            yield env
        finally:
            if env is not None:
                await env._shutdown()
            await server.stop(0)

    @property
    def client(self) -> SessionClient:
        """A client connected to the server."""
        return self._client

    @property
    def target(self) -> str:
        """``host:port`` of the server, for clients and workers of your own."""
        return self._target

    @property
    def task_queue(self) -> str:
        """The task queue of the workers :meth:`start` started."""
        return self._task_queue

    @property
    def server(self) -> Any:
        """The running ``sessiond.server.SessiondServer`` (its ``engine.table`` shows sessions and workers)."""
        return self._server

    @property
    def workers(self) -> list[SessionWorker]:
        """The workers running now, oldest first."""
        return [running.worker for running in self._workers]

    async def start_worker(self, activities: Activities, *, task_queue: str | None = None,
                           **options: Any) -> SessionWorker:
        """Start one more worker (registered when this returns); ``options`` are ``SessionWorker``'s."""
        options.setdefault("converter", self._converter)
        options.setdefault("reconnect_max_delay", 0.5)
        if "auth_token_file" not in options:
            options.setdefault("auth_token", self._worker_token)
        worker = SessionWorker(self._target, task_queue or self._task_queue, activities, **options)
        task = asyncio.create_task(worker.run(), name=f"sessiond-test-worker-{len(self._workers)}")
        self._workers.append(_Running(worker, task))
        registered = asyncio.ensure_future(worker.wait_registered())
        await asyncio.wait({registered, task}, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done():
            registered.cancel()
            self._workers.pop()
            await task  # raises the reason the worker could not register
            raise RuntimeError("the worker stopped before it registered")
        return worker

    async def stop_worker(self, worker: SessionWorker, *, drain: bool = False) -> None:
        """Stop a worker with a goodbye: without ``drain`` its sessions fail with ``WORKER_SHUTDOWN``."""
        running = self._find(worker)
        worker.shutdown(drain=drain)
        await running.task
        self._workers.remove(running)

    async def lose_worker(self, worker: SessionWorker) -> None:
        """Cut a worker off without a goodbye, as if its process died: its sessions fail with
        ``WORKER_LOST`` and callers' running activities raise ``SessionFailedError``."""
        running = self._find(worker)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        self._workers.remove(running)

    def _find(self, worker: SessionWorker) -> _Running:
        for running in self._workers:
            if running.worker is worker:
                return running
        raise ValueError("not a running worker of this environment")

    async def _shutdown(self) -> None:
        for running in list(self._workers):
            running.worker.shutdown(drain=False)
        for running in self._workers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(running.task, 10)
        self._workers.clear()
        await self._client.close()
