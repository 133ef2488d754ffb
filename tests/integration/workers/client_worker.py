"""A SessionWorker process for the client-library integration tests.

Run as ``python tests/integration/workers/client_worker.py --target HOST:PORT --task-queue Q``.
It prints one JSON line per event on stdout (``registered``, ``stopped``), handles SIGTERM by
draining (a second SIGTERM stops at once), and registers the activities below.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sessiond_client import ApplicationError, SessiondError, SessionInfo, SessionWorker, activity


def emit(event: str, **fields: Any) -> None:
    """One JSON event line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


@activity.defn(name="echo")
async def echo_activity(*args: Any) -> Any:
    """Return the single argument, or the list of arguments."""
    return args[0] if len(args) == 1 else list(args)


def reverse_bytes(data: bytes) -> bytes:
    """A sync activity over raw bytes."""
    return data[::-1]


async def fail(message: str) -> None:
    """Fail with a custom type, details and non_retryable."""
    raise ApplicationError(message, {"hint": "details"}, type="Boom", non_retryable=True)


def crash() -> None:
    """Fail with a plain exception in a thread."""
    raise ValueError("plain failure")


async def sleep(seconds: float) -> str:
    """An async activity that runs for a while (cancelled as a task)."""
    await asyncio.sleep(seconds)
    return "slept"


def wait_cancelled(marker: str, limit: float = 60.0) -> str:
    """A sync activity that blocks until its cancellation flag is set, then writes ``marker``: whether
    it was cancelled, why, and ``at`` (wall clock) when it stopped waiting."""
    Path(marker + ".started").write_text(activity.info().activity_id)
    cancelled = activity.wait_for_cancelled(limit)
    at = time.time()
    done = Path(marker + ".tmp")  # written whole, then renamed: a test that sees the marker can read it
    done.write_text(json.dumps({"cancelled": cancelled, "reason": activity.cancellation_reason(), "at": at}))
    done.replace(marker)
    return "done"


def gate(path: str, limit: float = 120.0) -> str:
    """A sync activity that runs until the file ``path`` exists (the test opens the gate): "done";
    "cancelled" if it is cancelled first, "gate never opened" after ``limit`` seconds."""
    Path(path + ".started").write_text(activity.info().activity_id)
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if activity.wait_for_cancelled(0.02):
            return "cancelled"
        if time.monotonic() > deadline:
            return "gate never opened"
    return "done"


async def blob(size: int) -> bytes:
    """A raw result of ``size`` bytes (to cross the server's message-size limit)."""
    return b"x" * size


def whoami() -> dict[str, Any]:
    """What activity.info() shows, from a thread."""
    info = activity.info()
    return {
        "pid": os.getpid(),
        "worker_id": info.worker_id,
        "session_id": info.session_id,
        "session_state": info.session.state.name,
        "host_name": info.session.host_name,
        "activity_type": info.activity_type,
        "activity_id": info.activity_id,
        "timeout": info.start_to_close_timeout.total_seconds() if info.start_to_close_timeout else None,
    }


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-sessions", type=int, default=1000)
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--grace", type=float, default=60.0)
    parser.add_argument("--decline-reattached", action="store_true",
                        help="give back every session got back at registration")
    parser.add_argument("--auth-token", default=None, help="the worker role's bearer token")
    parser.add_argument("--ca", default=None, help="PEM CA bundle: connect with TLS")
    parser.add_argument("--cert", default=None, help="PEM client certificate (mTLS, with --key)")
    parser.add_argument("--key", default=None, help="PEM client key")
    parser.add_argument("--session-log", default=None,
                        help="append one JSON line per session held/dropped, with this process's monotonic time")
    args = parser.parse_args()
    log_dir = os.environ.get("CLIENT_WORKER_LOG_DIR")
    if log_dir:
        # Debugging aid: a DEBUG log per process, and a stack dump on SIGUSR1.
        log_file = Path(log_dir, f"worker-{os.getpid()}.log").open("a")  # noqa: ASYNC230  # once, at start-up
        logging.basicConfig(level=logging.DEBUG, stream=log_file, format="%(asctime)s %(name)s %(message)s")
        faulthandler.register(signal.SIGUSR1, file=log_file, all_threads=True)
    else:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.session_log:
        record_sessions(Path(args.session_log))
    worker = SessionWorker(
        args.target,
        args.task_queue,
        [echo_activity, reverse_bytes, fail, crash, sleep, wait_cancelled, gate, whoami, blob],
        max_concurrent_sessions=args.max_sessions,
        worker_id=args.worker_id,
        shutdown_grace=args.grace,
        on_session_reattached=lambda info: on_reattached(info, keep=not args.decline_reattached),
        auth_token=args.auth_token,
        root_certificates=_pem(args.ca),
        certificate_chain=_pem(args.cert),
        private_key=_pem(args.key),
    )
    runner = asyncio.create_task(worker.run(handle_signals=True))
    registered = asyncio.create_task(worker.wait_registered())
    await asyncio.wait({runner, registered}, return_when=asyncio.FIRST_COMPLETED)
    if registered.done():
        emit("registered", worker_id=registered.result(), pid=os.getpid())
    else:
        registered.cancel()
    try:
        await runner
    except SessiondError as err:
        emit("error", type=type(err).__name__, reason=err.reason, message=str(err))
        return 2
    emit("stopped")
    return 0


def _pem(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class _SessionLog(logging.Handler):
    """The worker library's own record of the sessions it holds ("holding session X" when one is
    started on it, "dropped session X (reason)" when it ends or is not given back), as JSON lines
    with this process's monotonic time: the hard-limit test reads intervals from it."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.file = path.open("a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in ("holding session %s", "dropped session %s (%s)"):
            kind = "held" if record.msg.startswith("holding") else "dropped"
            line = {"t": time.monotonic(), kind: record.args[0] if isinstance(record.args, tuple) else None}
            self.file.write(json.dumps(line) + "\n")


SESSION_LOG: list[_SessionLog] = []


def record_sessions(path: Path) -> None:
    """Log every session held and dropped to ``path`` (see :class:`_SessionLog`)."""
    SESSION_LOG.append(_SessionLog(path))
    root = logging.getLogger()
    for handler in root.handlers:  # the debug records let through below stay out of the usual log
        handler.setLevel(max(handler.level, root.level))
    logger = logging.getLogger("sessiond_client.worker")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(SESSION_LOG[0])


def on_reattached(info: SessionInfo, *, keep: bool) -> bool:
    """Report every session got back at a registration (and keep it unless told otherwise)."""
    emit("reattached", session_id=info.session_id, keep=keep)
    if SESSION_LOG and keep:
        # Held from now on (it may be one the worker never heard of: placed just before its server
        # went silent, and given back at registration).
        SESSION_LOG[0].file.write(json.dumps({"t": time.monotonic(), "held": info.session_id,
                                              "reattached": True}) + "\n")
    return keep


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
