"""Re-make ``docs/dashboard.png``, the README's picture of the operator dashboard.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]

Starts a sessiond with the dashboard in this process, a few raw-protocol workers (the test suite's
``tests/integration/rawworker.py``) on two task queues, opens sessions with owners and activities,
makes sessions fail with three different causes, leaves creates waiting on a queue with no free
slot, then photographs the page with headless Chromium (``tests/ui/browser.py``). Needs the dev
install (``make .venv``) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc  # noqa: E402

from sessiond.config import ServerConfig  # noqa: E402
from sessiond.server import create_server  # noqa: E402
from tests.integration.rawworker import RawWorker  # noqa: E402
from tests.ui.browser import Browser, find_browser  # noqa: E402


def _options(**seconds: float) -> session_pb2.SessionOptions:
    out = session_pb2.SessionOptions()
    for name, value in seconds.items():
        getattr(out, name).FromTimedelta(timedelta(seconds=value))
    return out


async def _scene(target: str, stub: session_service_pb2_grpc.SessionServiceStub,
                 waiting: list[asyncio.Task[None]]) -> list[RawWorker]:
    workers = [
        RawWorker(target, "fileprocessing", worker_id="gpu-box-1", capacity=4, host_name="gpu-box-1.lab",
                  identity="41872@gpu-box-1"),
        RawWorker(target, "fileprocessing", worker_id="gpu-box-2", capacity=4, host_name="gpu-box-2.lab",
                  identity="41903@gpu-box-2"),
        RawWorker(target, "fileprocessing", worker_id="gpu-box-3", capacity=2, host_name="gpu-box-3.lab",
                  identity="7731@gpu-box-3"),
        RawWorker(target, "serial-ports", worker_id="bench-rig-a", capacity=1, host_name="rig-a.lab",
                  identity="2210@rig-a"),
    ]

    async def create(queue: str, owner: str = "", **options: float) -> str:
        request = session_service_pb2.CreateSessionRequest(task_queue=queue, owner=owner)
        if options:
            request.options.CopyFrom(_options(**options))
        return (await stub.CreateSession(request, timeout=10)).session.session_id

    async def run(session_id: str, times: int) -> None:
        for i in range(times):
            await stub.ExecuteActivity(session_service_pb2.ExecuteActivityRequest(
                session_id=session_id, activity_type="echo",
                input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(i).encode())))

    # Failures of four causes, each from a worker that is alone on the queue when its sessions are made.
    lost = await RawWorker(target, "fileprocessing", worker_id="gpu-box-9", capacity=2, host_name="gpu-box-9.lab",
                           identity="5120@gpu-box-9").start()
    for owner in ("etl/nightly-0412", "etl/nightly-0413"):
        await run(await create("fileprocessing", owner), 2)
    lost.close()  # its stream ends without a goodbye: WORKER_LOST
    await asyncio.sleep(0.3)
    hung = await RawWorker(target, "fileprocessing", worker_id="gpu-box-8", host_name="gpu-box-8.lab",
                           identity="6001@gpu-box-8").start()
    await create("fileprocessing", "ml/eval-3", heartbeat_timeout=0.6)
    hung.pause()  # silent: HEARTBEAT_TIMEOUT
    await asyncio.sleep(1.2)
    await hung.stop()
    leaving = await RawWorker(target, "fileprocessing", worker_id="gpu-box-7", host_name="gpu-box-7.lab",
                              identity="6002@gpu-box-7").start()
    await create("fileprocessing", "ml/eval-4")
    await leaving.goodbye(drain=False)  # WORKER_SHUTDOWN
    await asyncio.sleep(0.3)
    await leaving.stop()
    for worker in workers:
        await worker.start()
    await create("fileprocessing", "probe/short-lived", execution_timeout=0.5)  # EXECUTION_TIMEOUT
    await asyncio.sleep(1.0)
    # Open sessions with owners and activities.
    for owner, activities in (("alice/report-42", 3), ("bob/video-transcode", 7), ("carol/gpu-train-17", 12),
                              ("", 1), ("dave/thumbnails", 0), ("erin/ocr-batch-9", 4)):
        await run(await create("fileprocessing", owner), activities)
    await run(await create("serial-ports", "lab/flash-firmware"), 2)
    # Creates waiting for the busy serial port.
    async def wait_for_a_slot(owner: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue="serial-ports", owner=owner),
                                     timeout=120)

    for owner in ("lab/flash-firmware-2", "lab/selftest"):
        waiting.append(asyncio.get_running_loop().create_task(wait_for_a_slot(owner)))
    await asyncio.sleep(2.5)
    return workers


async def main(out: Path) -> int:
    found = find_browser()
    if found is None:
        print("needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)", file=sys.stderr)
        return 1
    server, port = await create_server(ServerConfig(listen="127.0.0.1:0", ui_listen="127.0.0.1:0"))
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    browser = Browser(*found, width=1280, height=1000)
    workers: list[RawWorker] = []
    waiting: list[asyncio.Task[None]] = []
    try:
        workers = await _scene(target, session_service_pb2_grpc.SessionServiceStub(channel), waiting)
        await browser.start()
        assert server.dashboard is not None and server.dashboard.port is not None
        await browser.open(f"http://127.0.0.1:{server.dashboard.port}/")
        await asyncio.sleep(2.5)
        height = int(await browser.js("return document.documentElement.scrollHeight"))
        await browser.resize(1280, height + 140)  # the window's frame is part of its size
        await asyncio.sleep(1.5)
        await browser.screenshot(out)
        print(f"wrote {out}")
    finally:
        for task in waiting:
            task.cancel()
        await browser.close()
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        await channel.close()
        await server.stop(0)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    raise SystemExit(asyncio.run(main(parser.parse_args().out)))
