"""Many library workers (``SessionWorker``) in one process, for the outlive and activity scenarios.

Unlike ``bench.worker`` (raw streams), these hold their sessions across a broken stream and report
them to a restarted server, as real workers do. Prints ``{"event": "ready", "t": <wall time>}``
once every worker has registered, then serves until SIGTERM or SIGKILL.

Each worker registers ``echo`` and a no-op ``noop`` activity (bytes in, the same bytes out), the
latter ``async`` or, with ``--noop sync``, a plain function the library runs in its thread pool.

    python -m bench.lib_workers --target 127.0.0.1:PORT --task-queue q --count 250 --prefix a
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from typing import Any

from sessiond_client import SessionWorker, activity

from bench.common import emit


@activity.defn(name="echo")
async def echo(value: Any = None) -> Any:
    """Return the argument."""
    return value


async def noop_async(data: bytes) -> bytes:
    """The no-op activity, async: returns its input."""
    return data


def noop_sync(data: bytes) -> bytes:
    """The no-op activity, sync (run in the worker's thread pool): returns its input."""
    return data


async def run(args: argparse.Namespace) -> None:
    activities: dict[str, Any] = {"echo": echo, "noop": noop_sync if args.noop == "sync" else noop_async}
    workers = [SessionWorker(args.target, args.task_queue, activities, worker_id=f"{args.prefix}-{i}",
                             max_concurrent_sessions=args.capacity)
               for i in range(args.count)]
    runs = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.gather(*(w.wait_registered() for w in workers))
    gc.collect()
    gc.freeze()  # as bench.worker does: the same footing for the library and the raw worker
    emit("ready", pid=os.getpid(), t=time.time(), workers=len(workers))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for task in runs:
        task.cancel()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run the workers until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench.lib_workers", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-queue", default="bench")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default=f"lib{os.getpid()}")
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--noop", choices=("async", "sync"), default="async", help="the noop activity's kind")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
