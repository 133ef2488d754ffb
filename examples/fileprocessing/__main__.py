"""``python -m examples.fileprocessing``: the whole demo against a real sessiond, in one command.

It starts sessiond, a small local file server and two workers, then runs three scenarios:

1. download → process → upload of a real file, all on one worker of two;
2. the session's worker is killed (SIGKILL) mid-way: the caller gets ``SessionFailedError``
   with the cause at once;
3. continue-as-new: run 1 completes its session and keeps the recreate token; run 2 recreates
   the session on the same worker and finds the file run 1 left on that worker's disk;
4. the worker process restarts mid-session (kill -9, then the same worker id and scratch
   directory): the session waits for it (``reattach_timeout``), the new process gets it back,
   finds the downloaded file on disk and the caller's next steps continue there.

Exits 0 when every scenario behaved as it should.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sessiond_client import SessionClient, SessionFailedError

from examples.common import connect, start_sessiond, until
from examples.fileprocessing.workflow import (
    TASK_QUEUE,
    continue_on_same_worker,
    download_then_continue,
    some_file_processing_workflow,
    survive_a_worker_restart,
)

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("Worker sessions pin a chain of activities to one worker process.\n" * 50).encode()


@contextmanager
def file_server() -> Iterator[str]:
    """A local HTTP server: GET /input.txt serves a file, POST /upload/<name> stores the body."""
    uploads: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(TEXT)))
            self.end_headers()
            self.wfile.write(TEXT)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            name = f"upload-{len(uploads) + 1}"
            uploads[name] = body
            reply = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


class Processes:
    """The demo's child processes: sessiond and the workers, started fresh (never forked)."""

    def __init__(self) -> None:
        self.target = ""  # host:port, once start_server has it
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(ROOT)}

    def start_server(self) -> None:
        self.server, self.target = start_sessiond("--log-level", "WARNING", env=self.env, cwd=ROOT)

    def start_worker(self, name: str, *extra: str) -> None:
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "examples.fileprocessing.worker", "--target", self.target, "--name", name, *extra],
            env=self.env, cwd=ROOT, stdout=None if extra else subprocess.DEVNULL)

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in list(self.workers.values()) + ([self.server] if self.server else []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in list(self.workers.values()) + ([self.server] if self.server else []):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _workers(client: SessionClient) -> list[str]:
    return [w.identity async for w in client.list_workers(task_queue=TASK_QUEUE)]


def _step(label: str, result: dict[str, Any]) -> None:
    detail = {k: v for k, v in result.items() if k not in ("worker", "host", "pid", "session_id")}
    print(f"    {label:<9} ran on {result['worker']} (host {result['host']}, pid {result['pid']})  {detail}")


async def run_demo(procs: Processes, files: str) -> bool:
    """The three scenarios; True when all behaved as expected."""
    ok = True
    client = await connect(procs.target)
    try:
        for name in ("worker-A", "worker-B"):
            procs.start_worker(name)
        await until("two workers", lambda: _has_workers(client, 2))
        print(f"sessiond at {procs.target}; workers on queue {TASK_QUEUE!r}: {sorted(await _workers(client))}\n")

        print("1. download -> process -> upload in one session")
        steps = await some_file_processing_workflow(client, f"{files}/input.txt", f"{files}/upload")
        for label, result in zip(("download", "process", "upload"), steps, strict=True):
            _step(label, result)
        same = len({s["worker"] for s in steps}) == 1
        print(f"    all three steps on one worker: {same}\n")
        ok &= same

        print("2. the session's worker is killed mid-way")
        async with client.create_session(TASK_QUEUE, creation_timeout=10) as session:
            downloaded = await session.execute_activity("download", f"{files}/input.txt")
            _step("download", downloaded)
            victim = downloaded["worker"]
            slow = asyncio.create_task(session.execute_activity("process", downloaded["path"], 30.0))
            await asyncio.sleep(0.3)  # let the slow step start on the worker: this is a demo, not a test
            print(f"    kill -9 {victim} while 'process' runs")
            started = asyncio.get_running_loop().time()
            procs.kill_worker(victim)
            try:
                await slow
                print("    UNEXPECTED: the activity finished")
                ok = False
            except SessionFailedError as error:
                took = (asyncio.get_running_loop().time() - started) * 1000
                print(f"    SessionFailedError after {took:.0f} ms: cause={error.cause.name}: {error}")
                ok &= error.cause.name == "WORKER_LOST"
        procs.start_worker("worker-C")
        await until("the replacement worker", lambda: _has_workers(client, 2))
        print()

        print("3. continue-as-new: recreate the session on the same worker from its token")
        downloaded, token = await download_then_continue(client, f"{files}/input.txt")
        _step("run 1", downloaded)
        print(f"    run 1 completed its session; recreate token {token[:12]!r}... kept")
        steps = await continue_on_same_worker(client, token, downloaded["path"], f"{files}/upload")
        for label, result in zip(("run 2", "run 2"), steps, strict=True):
            _step(label, result)
        same = all(s["worker"] == downloaded["worker"] for s in steps)
        print(f"    run 2 landed on run 1's worker and found its file: {same}")
        ok &= same
        print()

        ok &= await _restart_scenario(procs, client, files)
    finally:
        await client.close()
    return ok


async def _restart_scenario(procs: Processes, client: SessionClient, files: str) -> bool:
    print("4. the worker process restarts mid-session and continues from its disk")
    for name in list(procs.workers):
        procs.stop_worker(name)  # only the restartable worker takes this session
    with tempfile.TemporaryDirectory(prefix="worker-R-") as scratch:
        restartable = ("--worker-id", "worker-R", "--scratch", scratch)
        procs.start_worker("worker-R", *restartable)
        await until("worker-R", lambda: _has_workers(client, 1))

        async def restart(name: str) -> None:
            print(f"    kill -9 {name} after the download; starting it again (same worker id and scratch)")
            procs.kill_worker(name)
            procs.start_worker("worker-R", *restartable)

        steps = await survive_a_worker_restart(client, f"{files}/input.txt", f"{files}/upload", restart)
    for label, result in zip(("download", "process", "upload"), steps, strict=True):
        _step(label, result)
    continued = bool(steps[0]["worker"] == steps[1]["worker"] == "worker-R" and steps[0]["pid"] != steps[1]["pid"])
    print(f"    one session, two worker processes, the file found on disk: {continued}")
    return continued


async def _has_workers(client: SessionClient, n: int) -> bool:
    return len(await _workers(client)) >= n


def main() -> int:
    procs = Processes()
    try:
        procs.start_server()
        with file_server() as files:
            ok = asyncio.run(run_demo(procs, files))
    finally:
        procs.stop_all()
    print("\ndemo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
