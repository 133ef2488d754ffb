"""Many SessionWorkers in one process (separate from the server), for the server-restart tests.

Run as ``python tests/integration/workers/many_workers.py --target HOST:PORT --task-queue Q --count N
--prefix P``. Worker i registers as worker_id ``P-i``. Prints ``{"event": "registered"}`` once every
worker has registered, then serves (and reconnects after a server restart) until SIGTERM/SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from sessiond_client import SessionWorker, activity


@activity.defn(name="echo")
async def echo(value: Any) -> Any:
    """Return the argument."""
    return value


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--max-sessions", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    workers = [SessionWorker(args.target, args.task_queue, [echo], worker_id=f"{args.prefix}-{i}",
                             max_concurrent_sessions=args.max_sessions, reconnect_max_delay=1.0)
               for i in range(args.count)]
    runs = [asyncio.create_task(w.run()) for w in workers]
    await asyncio.gather(*(w.wait_registered() for w in workers))
    print(json.dumps({"event": "registered", "count": len(workers)}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for worker in workers:
        worker.shutdown(drain=False)
    await asyncio.gather(*runs, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
