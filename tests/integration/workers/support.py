"""Helpers for the client-library integration tests: SessionWorker processes and polling.

Workers run as fresh interpreters (``asyncio.create_subprocess_exec`` with ``sys.executable``):
never fork after grpc is initialised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sessiond_client import SessionClient, WorkerInfo

from tests.support.event_process import EventProcess

WORKER_SCRIPT = Path(__file__).resolve().parent / "client_worker.py"
REPO_ROOT = Path(__file__).resolve().parents[3]


async def poll(predicate: Callable[[], Any], *, within: float = 10.0, every: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return it, or fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within} s: {what or predicate}")
        await asyncio.sleep(every)


class ClientWorkerProcess(EventProcess):
    """One ``client_worker.py`` process; its stdout JSON events are collected."""

    @property
    def worker_id(self) -> str:
        """The id the worker registered with (after :meth:`wait_event` ``registered``)."""
        event = self.seen("registered")
        assert event is not None, "worker not registered yet"
        return str(event["worker_id"])

    async def wait_event(self, event: str, within: float = 30.0) -> dict[str, Any]:
        """Wait for an event line; fail early if the process exits without printing it."""
        return await poll(lambda: self.seen_or_exited(event), within=within,  # type: ignore[no-any-return]
                          what=f"worker event {event}")

    async def wait_exit(self, within: float = 30.0) -> int:
        """Wait for the process to exit; return its exit code."""
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            if os.environ.get("CLIENT_WORKER_LOG_DIR"):
                self.signal(signal.SIGUSR1)  # dump the stacks into the worker's log
                await asyncio.sleep(0.5)
            raise AssertionError(f"worker {self.pid} did not exit within {within} s") from None


async def start_worker(
    target: str, task_queue: str, *, max_sessions: int = 1000, worker_id: str | None = None, grace: float = 60.0,
    decline_reattached: bool = False, wait: str = "registered", extra: tuple[str, ...] = (),
) -> ClientWorkerProcess:
    """Start a worker process and wait until it has printed ``wait`` (its registration, by default)."""
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    argv = [str(WORKER_SCRIPT), "--target", target, "--task-queue", task_queue]
    argv += ["--max-sessions", str(max_sessions), "--grace", str(grace)]
    if worker_id:
        argv += ["--worker-id", worker_id]
    if decline_reattached:
        argv.append("--decline-reattached")
    argv += extra
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO_ROOT
    )
    worker = ClientWorkerProcess(process)
    try:
        await worker.wait_event(wait)
    except BaseException:
        await worker.reap()
        raise
    return worker


@contextlib.asynccontextmanager
async def worker_pool() -> AsyncIterator[Callable[..., Awaitable[ClientWorkerProcess]]]:
    """A factory of worker processes, every one reaped on exit."""
    started: list[ClientWorkerProcess] = []

    async def start(*args: Any, **kwargs: Any) -> ClientWorkerProcess:
        worker = await start_worker(*args, **kwargs)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            await worker.reap()


async def workers_of(client: SessionClient, task_queue: str) -> dict[str, WorkerInfo]:
    """Connected workers of a queue, by worker id."""
    return {w.worker_id: w async for w in client.list_workers(task_queue=task_queue)}
