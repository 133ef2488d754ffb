"""A child process that prints one JSON event per line on stdout (the raw worker, the library
worker): the lines are collected as they come, and the process is always reaped.

Started by the caller with ``asyncio.create_subprocess_exec`` (a fresh interpreter: never fork
after grpc is initialised) and ``stdout=PIPE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

__all__ = ["EventProcess"]


class EventProcess:
    """One child process; its stdout JSON events are collected in :attr:`events`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.process.pid

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):  # a line that is not JSON (a stray print) is skipped
                self.events.append(json.loads(line))

    def seen(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """The first event named ``event`` whose fields include ``fields``, or None."""
        for record in self.events:
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    async def seen_or_exited(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """:meth:`seen` while the process runs (None: not yet); once it has exited, the event from
        every line it wrote, or AssertionError. (The exit can be noticed before the reader has taken
        the lines written just before it: a worker prints its error, then exits.)"""
        found = self.seen(event, **fields)
        if found is None and self.process.returncode is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 5)  # to the end of its output
            found = self.seen(event, **fields)
            if found is None:
                raise AssertionError(f"process {self.pid} exited ({self.process.returncode}) before "
                                     f"{event} {fields}: {self.events}")
        return found

    def signal(self, sig: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT, ...)."""
        self.process.send_signal(sig)

    async def reap(self) -> None:
        """SIGKILL if still running (that also ends a SIGSTOPped process), wait for the process,
        close its stdin and let the reader take the last lines."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._reader, 5)
