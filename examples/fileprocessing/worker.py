"""A file-processing worker process: ``python -m examples.fileprocessing.worker --target HOST:PORT``."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile

from sessiond_client import SessionWorker

from examples.fileprocessing import activities


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--task-queue", default="fileprocessing")
    parser.add_argument("--name", default=f"worker-{os.getpid()}")
    parser.add_argument("--max-sessions", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"{args.name}-") as scratch:
        activities.SCRATCH = activities.Path(scratch)
        activities.WORKER_NAME = args.name
        worker = SessionWorker(
            args.target, args.task_queue, activities.ACTIVITIES,
            max_concurrent_sessions=args.max_sessions, identity=args.name, host_name=socket.gethostname(),
        )
        worker.install_signal_handlers()  # SIGTERM drains: no new sessions, open ones finish
        print(f"{args.name} ready (scratch {scratch})", flush=True)
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
