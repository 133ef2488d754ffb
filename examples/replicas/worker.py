"""The demo's worker: one SessionWorker given every replica's address (``--target a,b,c``).

Prints ``registered <worker_id>`` once registered, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from sessiond_client import SessionWorker, activity


@activity.defn(name="step")
async def step(n: int) -> str:
    """A quick step."""
    return f"step {n} done in worker process {os.getpid()}"


@activity.defn(name="slow_step")
async def slow_step(n: int) -> str:
    """A step that takes a few seconds (the demo kills its replica meanwhile)."""
    print(f"started slow_step {n}", flush=True)  # the demo's driver kills the replica on this line
    await asyncio.sleep(3)
    return f"step {n} done"


async def run(target: str, task_queue: str) -> None:
    worker = SessionWorker(target, task_queue, [step, slow_step], worker_id="demo-worker")
    runner = asyncio.create_task(worker.run())
    print(f"registered {await worker.wait_registered()}", flush=True)
    await runner


def main() -> None:
    """Run the worker until it is killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args.target, args.task_queue))


if __name__ == "__main__":
    main()
