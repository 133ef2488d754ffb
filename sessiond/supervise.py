"""Long-lived background tasks whose end is a failure of the process.

A loop meant to run until shutdown (a replica's janitor and free-slot publisher, the etcd store's
writer, mirrors and lease guard, the etcd client's streams) that ends early leaves the process
serving without it: a replica that no longer releases dead workers' sessions, publishes stale free
slots, or follows a frozen mirror. asyncio keeps such a task's exception until someone asks for it,
and nobody asks for a loop that should not end, so on its own that death shows at best as "Task
exception was never retrieved" when the task is collected. :func:`supervise` turns it into one
ERROR line with the traceback and a call of ``fail`` (a replica fences itself: it stops serving and
exits non-zero, so its supervisor starts it again and the other replicas adopt its workers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["supervise"]


def supervise(task: asyncio.Task[Any], *, stopping: Callable[[], bool], fail: Callable[[str], None],
              log: logging.Logger) -> None:
    """Treat any end of ``task`` while ``stopping()`` is false as a failure: log it once at ERROR
    (with the traceback when it raised) and call ``fail`` with a one-line reason.

    Args:
        task: a task meant to run until its owner stops it.
        stopping: true once the owner stops (or has given up) on purpose: the task's end, a cancel
            included, is then not an error, and is not reported.
        fail: what the owner does when the task died (called once, from the event loop).
        log: the owner's logger.
    """

    def ended(task: asyncio.Task[Any]) -> None:
        # Retrieved here whatever happens, so asyncio never reports it again at collection.
        error = None if task.cancelled() else task.exception()
        if stopping():
            return
        how = "was cancelled" if task.cancelled() else "returned" if error is None else f"raised {error!r}"
        log.error("background task %s stopped unexpectedly (%s)", task.get_name(), how, exc_info=error)
        fail(f"background task {task.get_name()} {how}")

    task.add_done_callback(ended)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a supervised ``task`` and wait until it has ended. What it raised, if it had died
    before, is not raised again here: it was reported when it died, and a shutdown must go on
    to close everything else."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved (reported by supervise when it died)
