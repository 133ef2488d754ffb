"""``python -m examples.gpu`` (or ``make demo-gpu``): GPU sessions on workers with 2 and 1 GPU.

It starts sessiond and two workers with the worker CLI — ``box-a`` with ``--capacity gpu=2 --label
zone=a`` and ``box-b`` with ``--capacity gpu=1 --label zone=b`` — then:

1. three sessions ask for 1 GPU each: all three are placed (box-a takes two, box-b one), each
   activity sees the GPU its session holds;
2. a fourth asks for 2 GPUs: no worker has two free, so it waits — and ``waiting_requests()``
   says it could be placed once enough frees up — until the two sessions on box-a complete;
3. a session asking for 2 GPUs with the selector ``zone=b`` can never be placed (box-b has one):
   ``waiting_requests()`` says why while it waits, and it ends with ``CreationTimeoutError``.

Exits 0 when every step behaved as it should.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from sessiond_client import CreationTimeoutError, Session, SessionClient

from examples.common import connect, start_sessiond, until

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "gpu"
WORKERS = {"box-a": ("gpu=2", "zone=a"), "box-b": ("gpu=1", "zone=b")}


class Processes:
    """sessiond and the two workers, as fresh processes."""

    def __init__(self) -> None:
        self.target = ""  # host:port, once start_server has it
        self.env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(ROOT)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_server(self) -> None:
        server, self.target = start_sessiond("--log-level", "WARNING", env=self.env, cwd=ROOT)
        self.procs.insert(0, server)  # stop() stops it last

    def start_workers(self) -> None:
        """The worker CLI, once the server answers: ``--capacity gpu=N --label zone=Z``."""
        for name, (capacity, label) in WORKERS.items():
            self._spawn("sessiond", "worker", "examples.gpu.activities:ACTIVITIES", "--queue", QUEUE,
                        "--address", self.target, "--worker-id", name, "--capacity", capacity, "--label", label,
                        "--log-level", "WARNING")

    def _spawn(self, *argv: str) -> None:
        self.procs.append(subprocess.Popen([sys.executable, "-m", *argv], env=self.env, cwd=ROOT,
                                           stdout=subprocess.DEVNULL))

    def stop(self) -> None:
        """The workers first (SIGTERM drains them; they hold nothing by now), then the server."""
        for group in (self.procs[1:], self.procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _open(client: SessionClient, stack: AsyncExitStack, gpus: int) -> Session:
    return await stack.enter_async_context(client.create_session(QUEUE, resources={"gpu": gpus},
                                                                 creation_timeout=30))


async def run_demo(client: SessionClient) -> bool:
    """The three steps; True when all behaved as expected."""
    ok = True

    async def registered() -> bool:
        return len([w async for w in client.list_workers(task_queue=QUEUE)]) == len(WORKERS)

    await until("both workers", registered)
    for worker in [w async for w in client.list_workers(task_queue=QUEUE)]:
        labels = ",".join(f"{k}={v}" for k, v in worker.labels.items())
        print(f"worker {worker.worker_id}: {worker.capacities['gpu']} gpu, labels {labels}")
    print()

    print("1. three sessions ask for 1 GPU each")
    stacks = {"box-a": AsyncExitStack(), "box-b": AsyncExitStack()}
    placed: list[str] = []
    for job in ("job-1", "job-2", "job-3"):
        # Each session is its own caller: a fresh exit stack, released by worker later on.
        stack = AsyncExitStack()
        session = await asyncio.create_task(_open(client, stack, 1))
        result = await session.execute_activity("train", job)
        print(f"    {job}: placed on {session.info.worker.worker_id}, the activity holds {result['gpus']} gpu")
        stacks[session.info.worker.worker_id].push_async_exit(stack)
        placed.append(session.info.worker.worker_id)
        ok &= result["gpus"] == 1 and result["worker"] == session.info.worker.worker_id
    print(f"    box-a holds {placed.count('box-a')}, box-b holds {placed.count('box-b')}")
    ok &= sorted(placed) == ["box-a", "box-a", "box-b"]
    print()

    print("2. a fourth session asks for 2 GPUs")
    async with AsyncExitStack() as big_stack:
        big = asyncio.create_task(_open(client, big_stack, 2))

        async def waiting() -> bool:
            return bool(await client.waiting_requests(task_queue=QUEUE))

        await until("the 2-GPU request to wait", waiting)
        (kind,) = await client.waiting_requests(task_queue=QUEUE)
        why = kind.unplaceable_reason or "a worker can hold it once 2 GPUs are free"
        print(f"    it waits: {kind.count} request for gpu={kind.resources['gpu']} ({why})")
        ok &= kind.unplaceable_reason is None
        print("    the two 1-GPU sessions on box-a complete")
        await stacks["box-a"].aclose()
        session = await asyncio.wait_for(big, 30)
        result = await session.execute_activity("train", "job-4")
        print(f"    job-4: placed on {session.info.worker.worker_id}, the activity holds {result['gpus']} gpu")
        ok &= session.info.worker.worker_id == "box-a" and result["gpus"] == 2
    await stacks["box-b"].aclose()
    print()

    print("3. a session asks for 2 GPUs in zone b (box-b has one)")

    async def impossible() -> None:
        async with client.create_session(QUEUE, resources={"gpu": 2}, selector="zone=b", creation_timeout=3):
            pass

    attempt = asyncio.create_task(impossible())
    await until("the zone-b request to wait", waiting)
    (kind,) = await client.waiting_requests(task_queue=QUEUE)
    print(f"    while it waits, the server says: {kind.unplaceable_reason}")
    ok &= kind.unplaceable_reason is not None and "largest: 1" in kind.unplaceable_reason
    try:
        await attempt
        print("    UNEXPECTED: it was placed")
        ok = False
    except CreationTimeoutError as error:
        print(f"    after its creation_timeout: CreationTimeoutError: {error}")
    return ok


async def _main(procs: Processes) -> bool:
    client = await connect(procs.target)
    procs.start_workers()
    try:
        return await run_demo(client)
    finally:
        await client.close()


def main() -> int:
    procs = Processes()
    try:
        procs.start_server()
        ok = asyncio.run(_main(procs))
    finally:
        procs.stop()
    print("\ngpu demo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
