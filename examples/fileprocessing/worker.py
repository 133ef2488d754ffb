"""A file-processing worker process: ``python -m examples.fileprocessing.worker --target HOST:PORT``.

With ``--worker-id`` and ``--scratch`` it can be restarted: the server gives the new process the
sessions the old one held (those created with a ``reattach_timeout``), and the worker keeps each one
whose files are still in the scratch directory (and gives back the others).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sessiond_client import SessionInfo, SessionWorker

from examples.fileprocessing import activities


@contextlib.contextmanager
def scratch_dir(path: str | None, name: str) -> Iterator[Path]:
    """The given directory (kept across restarts), or a temporary one."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        yield Path(tmp)


def reattached(info: SessionInfo) -> bool:
    """A session came back after a restart: continue it if its files are still on this disk."""
    keep = activities.can_continue(info.session_id)
    print(f"{activities.WORKER_NAME} got session {info.session_id[:8]} back: "
          f"{'its files are here, continuing' if keep else 'its files are gone, giving it back'}", flush=True)
    return keep


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--task-queue", default="fileprocessing")
    parser.add_argument("--name", default=f"worker-{os.getpid()}")
    parser.add_argument("--max-sessions", type=int, default=10)
    parser.add_argument("--worker-id", default=None, help="stable id: a restarted process gets its sessions back")
    parser.add_argument("--scratch", default=None, help="scratch directory kept across restarts (default: a temp dir)")
    args = parser.parse_args()
    with scratch_dir(args.scratch, args.name) as scratch:
        activities.SCRATCH = scratch
        activities.WORKER_NAME = args.name
        worker = SessionWorker(
            args.target, args.task_queue, activities.ACTIVITIES,
            max_concurrent_sessions=args.max_sessions, identity=f"{args.name}/{os.getpid()}",
            host_name=socket.gethostname(), worker_id=args.worker_id, on_session_reattached=reattached,
        )
        worker.install_signal_handlers()  # SIGTERM drains: no new sessions, open ones finish
        print(f"{args.name} ready (scratch {scratch})", flush=True)
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
