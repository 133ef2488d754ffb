"""Run one activity function with a fake activity context: no server, no worker."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, TypeVarTuple, overload

from sessiond_client._activity import ActivityInfo, _ActivityContext, _current
from sessiond_client._types import SessionInfo, SessionOptions, SessionState, WorkerRef
from sessiond_client._worker import _is_async

R = TypeVar("R")
Ts = TypeVarTuple("Ts")


def default_info() -> ActivityInfo:
    """The :class:`ActivityInfo` an activity sees in an :class:`ActivityEnvironment` by default."""
    now = datetime.now(UTC)
    session = SessionInfo(
        session_id="test-session", task_queue="test", state=SessionState.OPEN,
        worker=WorkerRef(worker_id="test-worker", identity="test", host_name="localhost"),
        recreate_token=b"", create_time=now, expire_time=now + timedelta(hours=24), close_time=None,
        owner="", failure=None, options=SessionOptions(),
    )
    return ActivityInfo(activity_id="test-activity", activity_type="test", session=session,
                        start_to_close_timeout=timedelta(minutes=5), headers={}, worker_id="test-worker")


class ActivityEnvironment:
    """Runs an activity function the way a worker would, minus the server.

    Inside, ``activity.info()`` returns :attr:`info`, ``activity.heartbeat(details)`` appends to
    :attr:`heartbeats` (and calls :attr:`on_heartbeat`), and :meth:`cancel` cancels it the way the
    server would (the flag for sync activities; task cancellation too for async ones)::

        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=40)
        assert await env.run(resize, "photo.png") == "photo-small.png"
        assert env.heartbeats[-1] == 100
    """

    def __init__(self, info: ActivityInfo | None = None) -> None:
        """Build the environment; ``info`` defaults to :func:`default_info`."""
        self.info = info or default_info()
        self.heartbeats: list[Any] = []
        self.on_heartbeat: Callable[[Any], None] | None = None
        self._context: _ActivityContext | None = None
        self._task: asyncio.Future[Any] | None = None

    def with_info(self, **changes: Any) -> ActivityEnvironment:
        """Replace fields of :attr:`info` (``attempt=2``, ``heartbeat_details=...``); returns ``self``."""
        self.info = dataclasses.replace(self.info, **changes)
        return self

    @overload
    async def run(self, fn: Callable[[*Ts], Awaitable[R]], /, *args: *Ts) -> R: ...

    @overload
    async def run(self, fn: Callable[[*Ts], R], /, *args: *Ts) -> R: ...

    async def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:  # type: ignore[misc]  # TypeVarTuple overloads
        """Run ``fn(*args)`` as an activity: async functions on this loop, sync ones in a thread.

        Raises:
            asyncio.CancelledError: An async activity was cancelled by :meth:`cancel`.
        """
        context = _ActivityContext(self.info, self._record)
        self._context = context
        run_context = contextvars.copy_context()
        run_context.run(_current.set, context)
        if _is_async(fn):
            self._task = asyncio.create_task(fn(*args), context=run_context)
        else:
            self._task = asyncio.ensure_future(
                asyncio.get_running_loop().run_in_executor(None, functools.partial(run_context.run, fn, *args)))
        try:
            return await self._task
        finally:
            self._task = None

    def cancel(self, reason: str = "CANCELLED") -> None:
        """Cancel the running activity as the server would (``activity.cancellation_reason()`` is ``reason``)."""
        if self._context is None:
            raise RuntimeError("no activity is running")
        self._context.cancel(reason)
        if self._task is not None and isinstance(self._task, asyncio.Task):
            self._task.cancel()

    def _record(self, details: Any) -> None:
        self.heartbeats.append(details)
        if self.on_heartbeat is not None:
            self.on_heartbeat(details)
