"""Child processes of the orchestrator: start, wait for their JSON events, read /proc, stop.

No grpc here: every server, worker and load generator is a fresh ``sys.executable`` process.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


class ChildError(RuntimeError):
    """A child process failed or did not answer in time."""


def child_env(tree: Path | None = None) -> dict[str, str]:
    """The environment of every child: quiet grpc core, unbuffered output, the repo importable.

    With ``tree`` (another checkout of the repository, e.g. the commit before a change), that
    tree's ``sessiond`` and ``sessiond_client`` are imported instead of this one's.
    """
    env = dict(os.environ)
    env["GRPC_VERBOSITY"] = "ERROR"
    env["PYTHONUNBUFFERED"] = "1"
    first = [str(tree), str(tree / "clients" / "python" / "src")] if tree is not None else [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*first, env.get("PYTHONPATH", "")) if p)
    # Tracing stays off unless a scenario turns it on explicitly.
    env.pop("OTEL_TRACES_EXPORTER", None)
    env.pop("OTEL_METRICS_EXPORTER", None)
    return env


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Proc:
    """A long-lived child (server or workers) whose stdout JSON lines are collected by a thread."""

    registry: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], logs: Path, tree: Path | None = None) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        # ``python -m`` puts the working directory first on sys.path: run in the tree to import it.
        self.popen = subprocess.Popen(argv, cwd=tree or REPO, env=child_env(tree), stdout=subprocess.PIPE,
                                      stderr=self._log,
                                      stdin=subprocess.DEVNULL, text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        Proc.registry.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self._log.write(f"[stdout] {line}")

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next ``event`` line; raises ChildError if the child exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            for seen in self.seen:
                if seen.get("event") == event:
                    self.seen.remove(seen)
                    return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{self.name}: no {event!r} within {timeout:.0f} s\n{_tail(self.log_path)}")
            try:
                item = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.popen.poll() is not None and self.events.empty():
                    raise ChildError(f"{self.name} exited with {self.popen.returncode} before {event!r}\n"
                                     f"{_tail(self.log_path)}") from None
                continue
            self.seen.append(item)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """Stop the child (``sig``, then SIGKILL after ``timeout``) and reap it."""
        self.send(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(10)
        self._thread.join(2)
        self._log.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        """Kill every child still running (the run is over or failed)."""
        for proc in list(cls.registry):
            proc.stop(timeout=2.0)


def wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ChildError(f"{proc.name} exited with {proc.popen.returncode}\n{_tail(proc.log_path)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ChildError(f"{proc.name}: port {port} not open within {timeout:.0f} s\n{_tail(proc.log_path)}")


def run_once(name: str, argv: list[str], logs: Path, timeout: float) -> dict[str, Any]:
    """Run a short-lived child (a load generator) to completion; return its ``result`` event."""
    log_path = logs / f"{name}.log"
    with open(log_path, "w") as log:
        try:
            done = subprocess.run(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=log,
                                  stdin=subprocess.DEVNULL, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ChildError(f"{name}: did not finish within {timeout:.0f} s\n{_tail(log_path)}") from exc
    results = []
    for line in done.stdout.splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item.get("event") == "result":
            results.append(item)
    if done.returncode != 0 or not results:
        raise ChildError(f"{name} exited with {done.returncode}\n{_tail(log_path)}")
    return results[-1]
