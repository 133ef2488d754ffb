"""Scenarios for sessions that outlive processes (issue 9): server restart, worker restart, crashed caller.

Orchestration only (no grpc here): sessiond, the library workers (``bench.lib_workers``) and the
probes (``bench.outlive_probe``) are fresh processes. Each figure has a same-run baseline:

* server kill -9 + restart with N sessions on N workers: time from the kill until each session is
  OPEN again, against the time until the new server accepts connections (a restart's floor);
* worker kill -9 + restart with reattach: time from the new process's start until its sessions are
  OPEN and attached again, against the time until that process has registered;
* crashed caller: time from the kill until the slot is given to the next caller, against the
  session's caller_timeout.
"""

from __future__ import annotations

import json
import signal
import time
from typing import TYPE_CHECKING, Any

from bench.procs import PY, Proc, free_port, wait_port
from bench.stats import percentile, ratio

if TYPE_CHECKING:
    from bench.runner import Ctx

QUEUE = "outlive"
WORKERS_PER_PROCESS = 250


def _server(ctx: Ctx, port: int, *args: str) -> Proc:
    argv = [PY, "-m", "sessiond", "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING", *args]
    proc = Proc(ctx.name("sessiond"), argv, ctx.logs)
    wait_port(port, proc, 30)
    return proc


def _lib_workers(ctx: Ctx, target: str, count: int, prefix: str, capacity: int = 1,
                 ready: list[dict[str, Any]] | None = None) -> list[Proc]:
    procs = []
    for first in range(0, count, WORKERS_PER_PROCESS):
        n = min(WORKERS_PER_PROCESS, count - first)
        procs.append(Proc(ctx.name("lib-workers"), [PY, "-m", "bench.lib_workers", "--target", target,
                                                    "--task-queue", QUEUE, "--count", str(n),
                                                    "--prefix", f"{prefix}{first}", "--capacity", str(capacity)],
                          ctx.logs))
    for proc in procs:
        event = proc.wait_event("ready", 60 + count / 10)
        if ready is not None:
            ready.append(event)
    return procs


def _probe(ctx: Ctx, what: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    from bench.procs import run_once

    return run_once(ctx.name(f"probe-{what}"), [PY, "-m", "bench.outlive_probe", what, "--task-queue", QUEUE,
                                                *args], ctx.logs, timeout)


def _watch_open(ctx: Ctx, target: str, ids_file: Any, since: float, timeout: float, *extra: str) -> Proc:
    """A probe that records when each session is OPEN (again) after ``since``; started ahead of time so
    its own start-up is not measured."""
    proc = Proc(ctx.name("probe-wait-open"), [PY, "-m", "bench.outlive_probe", "wait-open", "--task-queue", QUEUE,
                                              "--target", target, "--ids-file", str(ids_file), "--since", str(since),
                                              "--timeout", str(timeout), *extra], ctx.logs)
    proc.wait_event("ready", 30)
    return proc


def _stop(procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop(timeout=2.0, sig=signal.SIGKILL)


def server_restart_run(ctx: Ctx, n: int) -> dict[str, Any]:
    """N sessions on N one-slot workers; kill -9 sessiond; start it again on the same port."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = _server(ctx, port)
    workers: list[Proc] = []
    try:
        workers = _lib_workers(ctx, target, n, "w")
        ids = _probe(ctx, "create", "--target", target, "--n", str(n))["ids"]
        ids_file = ctx.logs / f"{ctx.name('ids')}.json"
        ids_file.write_text(json.dumps(ids))
        killed = time.time() + 1.0  # the watcher below is up by then
        watcher = _watch_open(ctx, target, ids_file, killed, 60)
        time.sleep(max(0.0, killed - time.time()))
        server.stop(timeout=1.0, sig=signal.SIGKILL)
        server = _server(ctx, port)
        listening = time.time() - killed
        result = watcher.wait_event("result", 90)
        watcher.stop()
    finally:
        _stop(workers)
        server.stop(timeout=2.0, sig=signal.SIGKILL)
    delays = [t - killed for t in result["seen_at"]]
    return {"n": n, "recovered_pct": 100.0 * len(delays) / n, "p50_s": percentile(delays, 50),
            "max_s": max(delays) if delays else None, "listening_s": listening}


def worker_restart_run(ctx: Ctx, sessions: int) -> dict[str, Any]:
    """A worker holding ``sessions`` sessions (reattach_timeout 30 s) is killed and started again."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = _server(ctx, port)
    workers: list[Proc] = []
    try:
        workers = _lib_workers(ctx, target, 1, "phoenix", capacity=sessions)
        ids = _probe(ctx, "create", "--target", target, "--n", str(sessions), "--reattach", "30")["ids"]
        ids_file = ctx.logs / f"{ctx.name('ids')}.json"
        ids_file.write_text(json.dumps(ids))
        _stop(workers)
        started = time.time() + 1.0  # the watcher below is up by then
        watcher = _watch_open(ctx, target, ids_file, started, 30, "--attached")
        time.sleep(max(0.0, started - time.time()))
        ready: list[dict[str, Any]] = []
        workers = _lib_workers(ctx, target, 1, "phoenix", capacity=sessions, ready=ready)
        registered = ready[0]["t"]
        result = watcher.wait_event("result", 60)
        watcher.stop()
    finally:
        _stop(workers)
        server.stop(timeout=2.0, sig=signal.SIGKILL)
    delays = [t - started for t in result["seen_at"]]
    return {"n": sessions, "recovered_pct": 100.0 * len(delays) / sessions, "max_s": max(delays) if delays else None,
            "registered_s": registered - started}


def caller_crash_run(ctx: Ctx, caller_timeout: float) -> dict[str, Any]:
    """A caller holding the only slot (max = 1) is killed; when does the next caller get the worker?"""
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = _server(ctx, port)
    workers: list[Proc] = []
    holder: Proc | None = None
    try:
        workers = _lib_workers(ctx, target, 1, "device", capacity=1)
        holder = Proc(ctx.name("holder"), [PY, "-m", "bench.outlive_probe", "hold", "--target", target,
                                           "--task-queue", QUEUE, "--caller-timeout", str(caller_timeout)], ctx.logs)
        session_id = holder.wait_event("ready", 30)["session_id"]
        killed = time.time()
        holder.stop(timeout=1.0, sig=signal.SIGKILL)
        result = _probe(ctx, "freed", "--target", target, "--session", session_id, "--since", str(killed),
                        "--wait", str(caller_timeout + 10))
    finally:
        if holder is not None:
            holder.stop(timeout=1.0, sig=signal.SIGKILL)
        _stop(workers)
        server.stop(timeout=2.0, sig=signal.SIGKILL)
    return {"caller_timeout_s": caller_timeout, "failed_s": result["failed_s"], "cause": result["cause"],
            "placed_s": result["placed_s"], "overshoot_s": result["placed_s"] - caller_timeout}


def scenario_outlive(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """The three rows of issue 9 (each run in fresh processes)."""
    from bench.runner import case, entry

    s = ctx.s
    restarts = []
    for r in range(s.outlive_runs):
        ctx.say(f"server restart {r + 1}/{s.outlive_runs}: {s.outlive_sessions} sessions on as many workers")
        restarts.append(server_restart_run(ctx, s.outlive_sessions))
    reattaches = []
    for r in range(s.outlive_runs):
        ctx.say(f"worker restart {r + 1}/{s.outlive_runs}: 3 sessions with reattach_timeout 30 s")
        reattaches.append(worker_restart_run(ctx, 3))
    callers = []
    for r in range(s.outlive_runs):
        ctx.say(f"crashed caller {r + 1}/{s.outlive_runs}: caller_timeout {s.caller_timeout:g} s")
        callers.append(caller_crash_run(ctx, s.caller_timeout))

    n = s.outlive_sessions
    server = entry(
        f"server kill -9 + restart, {n:,} sessions on {n:,} workers",
        "time from the kill until each session is OPEN again (p50/max), vs. the new server accepting connections",
        [case("all sessions OPEN again (max)", value=[x["max_s"] for x in restarts], unit="s",
              baseline=[x["listening_s"] for x in restarts], baseline_unit="s",
              baseline_what="kill → restarted server accepts connections",
              ratios=[ratio(x["max_s"], x["listening_s"]) for x in restarts],
              goal="within the recovery window (30 s), 100 % recovered", check=lambda v: v <= 30.0,
              check_on="value",
              details={"p50_s": [x["p50_s"] for x in restarts],
                       "recovered_pct": [x["recovered_pct"] for x in restarts]})],
        restarts)
    if any(x["recovered_pct"] < 100.0 for x in restarts):
        server["met"] = server["cases"][0]["met"] = False
    worker = entry(
        "worker kill -9 + restart with reattach (3 sessions)",
        "time from the new worker process's start until its sessions are OPEN and attached, vs. its registration",
        [case("sessions back on the new process", value=[x["max_s"] for x in reattaches], unit="s",
              baseline=[x["registered_s"] for x in reattaches], baseline_unit="s",
              baseline_what="new process start → registered",
              ratios=[ratio(x["max_s"], x["registered_s"]) for x in reattaches], goal="— (reported)", check=None,
              details={"recovered_pct": [x["recovered_pct"] for x in reattaches]})],
        reattaches)
    caller = entry(
        "crashed caller (SIGKILL) on a max = 1 worker",
        "time from the kill until the next caller is placed on the worker, vs. caller_timeout",
        [case(f"slot freed, caller_timeout {s.caller_timeout:g} s", value=[x["placed_s"] for x in callers], unit="s",
              baseline=[x["caller_timeout_s"] for x in callers], baseline_unit="s", baseline_what="caller_timeout",
              ratios=[ratio(x["placed_s"], x["caller_timeout_s"]) for x in callers],
              goal="≤ caller_timeout + 1 s", check=lambda v: v <= 1.0, check_on="value",
              details={"overshoot_s": [x["overshoot_s"] for x in callers], "failed_s": [x["failed_s"] for x in callers],
                       "causes": sorted({x["cause"] for x in callers})})],
        callers)
    # The goal is judged on the overshoot, not on the absolute time.
    overshoots = [x["overshoot_s"] for x in callers]
    caller["cases"][0]["met"] = caller["met"] = bool(overshoots) and max(overshoots) <= 1.0 \
        and all(x["cause"] == "FAILURE_CAUSE_CALLER_LOST" for x in callers)
    return {"server_restart": server, "worker_restart": worker, "caller_lost": caller}
