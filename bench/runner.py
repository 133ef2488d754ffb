"""The orchestrator: runs every scenario against sessiond and, in the same run, the echo baseline.

    python -m bench                 # full run (about 20 min): bench/results.json + bench/RESULTS.md
    python -m bench --smoke         # CI mode (tiny sizes, well under a minute): bench/out/smoke/
    python -m bench --out DIR       # write results.json and RESULTS.md into DIR instead
    python -m bench --only core,kill9
    python -m bench --render bench/results.json   # re-render RESULTS.md (e.g. after editing bench/notes.md)

Every figure is a ratio to a baseline measured in the same run (an empty grpc.aio echo service,
or sessiond itself with tracing off), over repetitions whose order alternates so that machine
drift spreads over both sides; the report quotes medians and the (min–max) spread.
This module never imports grpc: each server, worker and load generator is a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report
from bench.activity import scenario_activity
from bench.auth import scenario_auth
from bench.common import cpu_seconds, rss_kb
from bench.outlive import scenario_outlive
from bench.procs import PY, REPO, ChildError, Proc, free_port, run_once, wait_port
from bench.replicas import scenario_replicas
from bench.resources import scenario_resources
from bench.stats import percentile, ratio, spread
from sessiond.ui import POLL_INTERVAL_MS

SCENARIOS = ("core", "activity", "kill9", "frozen_worker", "scale", "tracing", "dashboard", "outlive", "resources",
             "auth", "replicas")
# Scenarios that produce several rows of the table (one JSON entry each).
MULTI_ROW = ("core", "activity", "outlive", "replicas")
# The JSON has one entry per row of the table (core yields three of them).
RESULT_KEYS = ("create_complete", "execute_activity_1", "execute_activity_64", "activity_floor", "library_worker",
               "kill9", "frozen_worker", "scale", "tracing", "dashboard", "server_restart", "worker_restart",
               "caller_lost", "resources", "auth", "replicas_create_complete", "replicas_forwarded",
               "replicas_failover", "replicas_leader_kill")


@dataclass(frozen=True)
class Sizes:
    """How big and how long: the full run, or the smoke run that only proves the scripts work."""

    core_reps: int
    warmup: float
    duration: float
    kill_runs: int
    kills: int
    echo_kills: int
    frozen_runs: int
    frozen: int
    heartbeat_timeout: float
    scale_runs: int
    levels: tuple[int, ...]
    sessions: int
    probe_warmup: float
    probe_duration: float
    idle_seconds: float
    tracing_runs: int
    tracing_in_flight: int
    dashboard_runs: int
    outlive_runs: int
    outlive_sessions: int
    caller_timeout: float
    resource_runs: int
    resource_workers: int
    resource_reps: int
    probe_ops: int
    auth_runs: int
    replica_reps: int
    failover_trials: int
    leader_trials: int


FULL = Sizes(core_reps=4, warmup=1.0, duration=3.0, kill_runs=3, kills=20, echo_kills=10, frozen_runs=3, frozen=8,
             heartbeat_timeout=1.0, scale_runs=3, levels=(10, 1000, 10_000), sessions=100_000, probe_warmup=1.0,
             probe_duration=3.0, idle_seconds=2.0, tracing_runs=3, tracing_in_flight=64, dashboard_runs=6,
             outlive_runs=3, outlive_sessions=1000, caller_timeout=5.0, resource_runs=3, resource_workers=1000,
             resource_reps=4, probe_ops=5000, auth_runs=6, replica_reps=3, failover_trials=10,
             leader_trials=5)
SMOKE = Sizes(core_reps=1, warmup=0.2, duration=0.5, kill_runs=1, kills=3, echo_kills=2, frozen_runs=1, frozen=2,
              heartbeat_timeout=0.5, scale_runs=1, levels=(10, 40, 80), sessions=400, probe_warmup=0.2,
              probe_duration=0.5, idle_seconds=0.3, tracing_runs=1, tracing_in_flight=16, dashboard_runs=1,
              outlive_runs=1, outlive_sessions=20, caller_timeout=1.0, resource_runs=1, resource_workers=40,
              resource_reps=2, probe_ops=200, auth_runs=1, replica_reps=1, failover_trials=1,
              leader_trials=1)

WORKER_STREAMS_PER_PROCESS = 1250


class Ctx:
    """What every scenario needs: sizes, the log directory, and helpers to start the processes."""

    def __init__(self, sizes: Sizes, logs: Path, verbose: bool = True, before: Path | None = None,
                 loops: tuple[str, ...] = ()) -> None:
        self.s = sizes
        self.logs = logs
        self.verbose = verbose
        # The activity scenario's extra variants: another checkout (before a change), other event loops.
        self.before = before
        self.loops = loops
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{self._n:03d}-{what}"

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ----------------------------------------------------------------- servers

    @contextlib.contextmanager
    def echo(self, loop: str = "asyncio") -> Iterator[tuple[Proc, str]]:
        proc = Proc(self.name("echo-server"), [PY, "-m", "bench.echo_server", "--port", "0", "--loop", loop],
                    self.logs)
        try:
            ready = proc.wait_event("ready", 30)
            yield proc, f"127.0.0.1:{ready['port']}"
        finally:
            proc.stop()

    @contextlib.contextmanager
    def sessiond(self, tracing: str | None = None, ui_port: int | None = None,
                 extra: list[str] | None = None) -> Iterator[tuple[Proc, str]]:
        """``python -m sessiond serve`` (or, with ``tracing``, the bench launcher with that tracing set-up);
        with ``ui_port``, the dashboard on that port too; ``extra`` flags for ``serve``."""
        port = free_port()
        if tracing is None:
            argv = [PY, "-m", "sessiond", "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING",
                    *(extra or [])]
            if ui_port is not None:
                argv += ["--ui-listen", f"127.0.0.1:{ui_port}"]
            proc = Proc(self.name("sessiond"), argv, self.logs)
        else:
            argv = [PY, "-m", "bench.sessiond_server", "--port", str(port), "--tracing", tracing]
            proc = Proc(self.name(f"sessiond-{tracing}"), argv, self.logs)
        try:
            wait_port(port, proc, 30)
            yield proc, f"127.0.0.1:{port}"
        finally:
            proc.stop()

    # ----------------------------------------------------------------- workers

    def start_workers(self, target: str, streams: int, *, kind: str = "sessiond", queue: str = "bench",
                      capacity: int = 1000, separate: bool = True, per_process: int = WORKER_STREAMS_PER_PROCESS,
                      wait: bool = True, resources: tuple[str, ...] = (), label_sets: int = 0,
                      token: str = "") -> list[Proc]:
        """Start ``streams`` worker (or echo holder) streams over as many processes as needed, each
        declaring ``resources`` (``NAME=N``) besides sessions and one of ``label_sets`` label sets
        (and presenting the bearer ``token``, if any)."""
        procs = []
        left = streams
        while left > 0:
            n = min(left, per_process)
            argv = [PY, "-m", "bench.worker", "--target", target, "--kind", kind, "--task-queue", queue,
                    "--streams", str(n), "--capacity", str(capacity),
                    "--label-sets", str(label_sets), "--label-offset", str(streams - left)]
            argv += [arg for resource in resources for arg in ("--resource", resource)]
            left -= n
            if separate:
                argv.append("--separate-channels")
            if token:
                argv += ["--token", token]
            procs.append(Proc(self.name(f"{kind}-workers"), argv, self.logs))
        if wait:
            self.wait_ready(procs, 60 + streams / 50)
        return procs

    def wait_ready(self, procs: list[Proc], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [p.wait_event("ready", max(1.0, deadline - time.monotonic())) for p in procs]

    @staticmethod
    def stop_all(procs: list[Proc]) -> None:
        for proc in procs:
            proc.send(signal.SIGTERM)
        for proc in procs:
            proc.stop(timeout=5.0)

    # ----------------------------------------------------------------- load generators

    def loadgen(self, what: str, args: list[str], timeout: float) -> dict[str, Any]:
        return run_once(self.name(f"loadgen-{what}"), [PY, "-m", "bench.loadgen", *args], self.logs, timeout)

    def phases(self, target: str, phases: list[str], server: Proc, worker: Proc | None = None,
               warmup: float | None = None, duration: float | None = None, queue: str = "bench",
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run timed phases in one fresh load-generator process; returns {phase name: result}."""
        warmup = self.s.warmup if warmup is None else warmup
        duration = self.s.duration if duration is None else duration
        args = ["run", "--target", target, "--phases", ",".join(phases), "--warmup", str(warmup),
                "--duration", str(duration), "--server-pid", str(server.pid), "--task-queue", queue, *extra]
        if worker is not None:
            args += ["--worker-pid", str(worker.pid)]
        result = self.loadgen(phases[0].split(":")[0], args, timeout=60 + len(phases) * (warmup + duration) * 3)
        return {p["phase"]: p for p in result["phases"]}


# --------------------------------------------------------------------- helpers for results


def case(label: str, *, value: list[float | None], unit: str, baseline: list[float | None], baseline_unit: str,
         baseline_what: str, ratios: list[float | None], goal: str, check: Callable[[float], bool] | None,
         check_on: str = "ratio", details: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """One row of the results table: medians and spreads over repetitions, and the goal verdict."""
    out: dict[str, Any] = {
        "case": label,
        "value": {**spread(value), "unit": unit},
        "baseline": {**spread(baseline), "unit": baseline_unit, "what": baseline_what},
        "ratio": spread(ratios),
        "goal": goal,
    }
    judged = out["ratio"]["median"] if check_on == "ratio" else out["value"]["median"]
    out["met"] = None if check is None or judged is None else bool(check(judged))
    if details:
        out["details"] = {k: (spread(v) if all(isinstance(x, int | float) or x is None for x in v) else v)
                          for k, v in details.items()}
    return out


def entry(title: str, figure: str, cases: list[dict[str, Any]], runs: list[Any], **extra: Any) -> dict[str, Any]:
    verdicts = [c["met"] for c in cases if c["met"] is not None]
    return {"title": title, "figure": figure, "met": all(verdicts) if verdicts else None, "cases": cases,
            "runs": runs, **extra}


def _get(phase: dict[str, Any], *keys: str) -> Any:
    value: Any = phase
    for key in keys:
        if value is None:
            return None
        value = value.get(key)
    return value


# --------------------------------------------------------------------- scenario: core (cc + activity)


def scenario_core(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """Create+complete at 1/16/64 in flight and execute_activity at 1/64, each rep next to an echo rep."""
    s = ctx.s
    reps = []
    for r in range(s.core_reps):
        rep: dict[str, Any] = {}
        for system in (("echo", "sessiond") if r % 2 == 0 else ("sessiond", "echo")):
            ctx.say(f"core rep {r + 1}/{s.core_reps}: {system}")
            if system == "echo":
                with ctx.echo() as (server, target):
                    workers = ctx.start_workers(target, 1, kind="echo-worker")
                    try:
                        rep["echo"] = ctx.phases(target, ["unary:1", "unary:16", "unary:64", "pingpong:1", "push:1",
                                                          "push:16", "push:64", "relay:1", "relay:64"],
                                                 server, workers[0])
                    finally:
                        ctx.stop_all(workers)
            else:
                with ctx.sessiond() as (server, target):
                    workers = ctx.start_workers(target, 1, capacity=1000)
                    try:
                        rep["sessiond"] = ctx.phases(target, ["cc:1", "cc:16", "cc:64", "activity:1", "activity:64"],
                                                     server, workers[0])
                    finally:
                        ctx.stop_all(workers)
        reps.append(rep)

    cc_cases, cc_runs = [], []
    for n in (1, 16, 64):
        rows = []
        for rep in reps:
            sd, echo, push = rep["sessiond"][f"cc:{n}"], rep["echo"][f"unary:{n}"], rep["echo"][f"push:{n}"]
            rows.append({
                "pairs_per_s": sd["ops_per_s"], "echo_rps": echo["ops_per_s"],
                "ratio": ratio(sd["ops_per_s"], echo["ops_per_s"] / 2),
                "floor_ratio": ratio(push["ops_per_s"], echo["ops_per_s"] / 2),
                "share_of_floor": ratio(sd["ops_per_s"], push["ops_per_s"]),
                "floor_server_us_per_pair": push.get("server_us_per_op"),
                "pair_p50_ms": sd["p50_ms"], "pair_p99_ms": sd["p99_ms"], "create_p50_ms": _get(sd, "create", "p50_ms"),
                "echo_p50_ms": echo["p50_ms"], "echo_p99_ms": echo["p99_ms"],
                "server_us_per_pair": sd.get("server_us_per_op"),
                "echo_server_us_per_2_rpcs": (echo.get("server_us_per_op") or 0) * 2 or None,
                "server_cores": _get(sd, "cpu_cores", "server"), "worker_cores": _get(sd, "cpu_cores", "worker"),
                "errors": sum(sd["errors"].values()),
            })
        cc_runs.append({"in_flight": n, "reps": rows})
        cc_cases.append(case(
            f"{n} in flight", value=[x["pairs_per_s"] for x in rows], unit="pairs/s",
            baseline=[x["echo_rps"] / 2 for x in rows], baseline_unit="pairs/s", baseline_what="echo rps / 2",
            ratios=[x["ratio"] for x in rows], goal="≥ 0.85", check=lambda v: v >= 0.85,
            details={k: [x[k] for x in rows] for k in ("pair_p50_ms", "pair_p99_ms", "create_p50_ms", "echo_p50_ms",
                                                       "echo_p99_ms", "floor_ratio", "share_of_floor",
                                                       "server_us_per_pair", "echo_server_us_per_2_rpcs",
                                                       "floor_server_us_per_pair", "server_cores",
                                                       "worker_cores", "errors")},
        ))

    act1, act64 = [], []
    for rep in reps:
        sd1, e1 = rep["sessiond"]["activity:1"], rep["echo"]["unary:1"]
        sd64, e64 = rep["sessiond"]["activity:64"], rep["echo"]["unary:64"]
        pp, r1, r64 = rep["echo"]["pingpong:1"], rep["echo"]["relay:1"], rep["echo"]["relay:64"]
        act1.append({"p50_ms": sd1["p50_ms"], "p99_ms": sd1["p99_ms"], "echo_p50_ms": e1["p50_ms"],
                     "echo_p99_ms": e1["p99_ms"], "pingpong_p50_ms": pp["p50_ms"], "floor_p50_ms": r1["p50_ms"],
                     "ratio": ratio(sd1["p50_ms"], e1["p50_ms"]),
                     "floor_ratio": ratio(r1["p50_ms"], e1["p50_ms"]),
                     "server_us_per_activity": sd1.get("server_us_per_op"),
                     "worker_cores": _get(sd1, "cpu_cores", "worker"), "errors": sum(sd1["errors"].values())})
        act64.append({"per_s": sd64["ops_per_s"], "echo_rps": e64["ops_per_s"],
                      "ratio": ratio(sd64["ops_per_s"], e64["ops_per_s"]),
                      "floor_ratio": ratio(r64["ops_per_s"], e64["ops_per_s"]),
                      "share_of_floor": ratio(sd64["ops_per_s"], r64["ops_per_s"]),
                      "floor_server_us_per_activity": r64.get("server_us_per_op"), "p50_ms": sd64["p50_ms"],
                      "p99_ms": sd64["p99_ms"], "server_us_per_activity": sd64.get("server_us_per_op"),
                      "echo_server_us_per_rpc": e64.get("server_us_per_op"),
                      "pingpong_server_us_per_msg": pp.get("server_us_per_op"),
                      "server_cores": _get(sd64, "cpu_cores", "server"),
                      "worker_cores": _get(sd64, "cpu_cores", "worker"), "errors": sum(sd64["errors"].values())})
    a1 = case("1 in flight", value=[x["p50_ms"] for x in act1], unit="ms p50",
              baseline=[x["echo_p50_ms"] for x in act1], baseline_unit="ms p50",
              baseline_what="echo unary p50, 1 in flight", ratios=[x["ratio"] for x in act1],
              goal="≤ 2.0×", check=lambda v: v <= 2.0,
              details={k: [x[k] for x in act1] for k in ("p99_ms", "echo_p99_ms", "pingpong_p50_ms", "floor_p50_ms",
                                                         "floor_ratio", "server_us_per_activity", "worker_cores",
                                                         "errors")})
    a64 = case("64 in flight", value=[x["per_s"] for x in act64], unit="activities/s",
               baseline=[x["echo_rps"] for x in act64], baseline_unit="rps", baseline_what="echo unary, 64 in flight",
               ratios=[x["ratio"] for x in act64], goal="≥ 0.5", check=lambda v: v >= 0.5,
               details={k: [x[k] for x in act64] for k in ("p50_ms", "p99_ms", "floor_ratio", "share_of_floor",
                                                           "server_us_per_activity", "floor_server_us_per_activity",
                                                           "echo_server_us_per_rpc", "pingpong_server_us_per_msg",
                                                           "server_cores", "worker_cores", "errors")})
    return {
        "create_complete": entry("create + complete", "pairs/s vs. echo rps / 2 (a pair is two RPCs); p50/p99",
                                 cc_cases, cc_runs),
        "execute_activity_1": entry("execute_activity (no-op), 1 in flight", "p50 vs. echo unary p50", [a1], act1),
        "execute_activity_64": entry("execute_activity (no-op), 64 in flight", "throughput vs. echo unary rps",
                                     [a64], act64),
    }


# --------------------------------------------------------------------- scenarios: kill -9 and SIGSTOP


def _detect(ctx: Ctx, *, system: str, sig: str, n: int, heartbeat_timeout: float = 0.0,
            stagger: float = 0.0, settle: float = 0.1) -> list[dict[str, Any]]:
    """Start ``n`` single-stream worker processes, signal each, time the caller's notification."""
    server_cm = ctx.echo() if system == "echo" else ctx.sessiond()
    with server_cm as (_server, target):
        workers: list[Proc] = []
        try:
            queues = [f"victim-{i}" for i in range(n)]
            for queue in queues:
                workers += ctx.start_workers(target, 1, kind=system, queue=queue, capacity=1, separate=True,
                                             wait=False)
            ctx.wait_ready(workers, 60 + 2 * n)
            args = ["detect", "--target", target, "--system", system, "--signal", sig,
                    "--pids", ",".join(str(w.pid) for w in workers), "--queues", ",".join(queues),
                    "--settle", str(settle), "--stagger", str(stagger)]
            if heartbeat_timeout:
                args += ["--heartbeat-timeout", str(heartbeat_timeout)]
            result = ctx.loadgen(f"detect-{system}-{sig}", args, timeout=60 + n * (2 * settle + 3 + stagger))
            return list(result["samples"])
        finally:
            for worker in workers:
                worker.stop(timeout=2.0, sig=signal.SIGKILL)


def scenario_kill9(ctx: Ctx) -> dict[str, Any]:
    """kill -9 of the session's worker: SIGKILL → the caller's WatchSession sees FAILED."""
    s = ctx.s
    runs = []
    for r in range(s.kill_runs):
        ctx.say(f"kill -9 run {r + 1}/{s.kill_runs}: {s.kills} sessiond workers, {s.echo_kills} echo holders")
        sd = _detect(ctx, system="sessiond", sig="KILL", n=s.kills)
        echo = _detect(ctx, system="echo", sig="KILL", n=s.echo_kills)
        runs.append({"sessiond": sd, "echo": echo})
    per_run = []
    for run in runs:
        ms = [x["ms"] for x in run["sessiond"] if x["ms"] is not None]
        ems = [x["ms"] for x in run["echo"] if x["ms"] is not None]
        per_run.append({"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
                        "echo_n": len(ems), "echo_p50_ms": percentile(ems, 50), "echo_p99_ms": percentile(ems, 99),
                        "causes": sorted({f"{x['state']}/{x['cause']}" for x in run["sessiond"]}),
                        "missed": sum(1 for x in run["sessiond"]
                                      if x["ms"] is None or x["state"] != "SESSION_STATE_FAILED")})
    pooled = [x["ms"] for run in runs for x in run["sessiond"] if x["ms"] is not None]
    epooled = [x["ms"] for run in runs for x in run["echo"] if x["ms"] is not None]
    p99, ep99 = percentile(pooled, 99), percentile(epooled, 99)
    row = case(f"p99 over n={len(pooled)} kills ({s.kill_runs} runs)", value=[x["p99_ms"] for x in per_run], unit="ms",
               baseline=[x["echo_p99_ms"] for x in per_run], baseline_unit="ms",
               baseline_what="echo: SIGKILLed stream holder → Notify stream message, p99",
               ratios=[ratio(x["p99_ms"], x["echo_p99_ms"]) for x in per_run], goal="p99 ≤ 100 ms",
               check=lambda v: v <= 100.0, check_on="value",
               details={"p50_ms": [x["p50_ms"] for x in per_run], "max_ms": [x["max_ms"] for x in per_run],
                        "echo_p50_ms": [x["echo_p50_ms"] for x in per_run],
                        "causes": sorted({c for x in per_run for c in x["causes"]}),
                        "missed": [x["missed"] for x in per_run]})
    row["pooled"] = {"n": len(pooled), "p50_ms": percentile(pooled, 50), "p99_ms": p99, "max_ms": max(pooled),
                     "echo_n": len(epooled), "echo_p50_ms": percentile(epooled, 50), "echo_p99_ms": ep99}
    if p99 is not None:
        row["met"] = p99 <= 100.0 and all(x["missed"] == 0 for x in per_run)
    return entry("kill -9 of the session's worker", "SIGKILL → caller's WatchSession sees FAILED (ms)", [row],
                 per_run)


def scenario_frozen(ctx: Ctx) -> dict[str, Any]:
    """SIGSTOP of the session's worker: FAILED must come within heartbeat_timeout + 250 ms."""
    s = ctx.s
    timeout_ms = s.heartbeat_timeout * 1e3
    runs = []
    for r in range(s.frozen_runs):
        ctx.say(f"frozen run {r + 1}/{s.frozen_runs}: {s.frozen} sessiond workers SIGSTOPped, 1 echo holder")
        sd = _detect(ctx, system="sessiond", sig="STOP", n=s.frozen, heartbeat_timeout=s.heartbeat_timeout,
                     stagger=0.35, settle=0.5)
        runs.append({"sessiond": sd})
    ctx.say("frozen: echo baseline (a SIGSTOPped echo stream holder)")
    echo = _detect_echo_frozen(ctx, wait=s.heartbeat_timeout + 2.0)
    per_run = []
    for run in runs:
        ms = [x["ms"] for x in run["sessiond"] if x["ms"] is not None]
        per_run.append({"n": len(ms), "min_ms": min(ms), "p50_ms": percentile(ms, 50), "max_ms": max(ms),
                        "causes": sorted({f"{x['state']}/{x['cause']}" for x in run["sessiond"]}),
                        "missed": sum(1 for x in run["sessiond"]
                                      if x["ms"] is None or x["cause"] != "FAILURE_CAUSE_HEARTBEAT_TIMEOUT")})
    pooled = [x["ms"] for run in runs for x in run["sessiond"] if x["ms"] is not None]
    limit = timeout_ms + 250.0
    row = case(f"max over n={len(pooled)} freezes ({s.frozen_runs} runs), heartbeat_timeout {s.heartbeat_timeout:g} s",
               value=[x["max_ms"] for x in per_run], unit="ms", baseline=[timeout_ms] * len(per_run),
               baseline_unit="ms", baseline_what="heartbeat_timeout",
               ratios=[ratio(x["max_ms"], timeout_ms) for x in per_run], goal=f"≤ timeout + 250 ms ({limit:.0f} ms)",
               check=lambda v: v <= limit, check_on="value",
               details={"min_ms": [x["min_ms"] for x in per_run], "p50_ms": [x["p50_ms"] for x in per_run],
                        "causes": sorted({c for x in per_run for c in x["causes"]}),
                        "missed": [x["missed"] for x in per_run]})
    row["pooled"] = {"n": len(pooled), "min_ms": min(pooled), "p50_ms": percentile(pooled, 50),
                     "p99_ms": percentile(pooled, 99), "max_ms": max(pooled)}
    row["echo_baseline"] = echo
    row["met"] = max(pooled) <= limit and all(x["missed"] == 0 for x in per_run)
    return entry("frozen worker (SIGSTOP)", "SIGSTOP → FAILED (ms), vs. heartbeat_timeout", [row], per_run)


def _detect_echo_frozen(ctx: Ctx, wait: float) -> dict[str, Any]:
    """The echo baseline of a frozen peer: grpc alone does not notice it (keepalive is 30 s + 10 s)."""
    with ctx.echo() as (_server, target):
        holders = ctx.start_workers(target, 1, kind="echo", queue="frozen", separate=True)
        try:
            args = ["detect", "--target", target, "--system", "echo", "--signal", "STOP",
                    "--pids", str(holders[0].pid), "--answer-timeout", str(wait)]
            samples = ctx.loadgen("detect-echo-STOP", args, timeout=60 + wait)["samples"]
        finally:
            holders[0].stop(timeout=2.0, sig=signal.SIGKILL)
    ms = samples[0]["ms"]
    return {"detected_ms": ms, "waited_s": wait,
            "note": "not detected" if ms is None else "detected"}


# --------------------------------------------------------------------- scenario: scale


def _idle_cores(pid: int, seconds: float) -> float | None:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    after = cpu_seconds(pid)
    return None if before is None or after is None else round((after - before) / seconds, 3)


def _scale_run(ctx: Ctx, system: str) -> dict[str, Any]:
    """One server: connect workers level by level, probing create (echo: unary) latency and RSS at each.

    sessiond also opens ``sizes.sessions`` sessions once the second level is connected, so the last
    level is the full scale (10,000 workers and 100,000 open sessions) and the fill runs while the
    box is not yet busy with the last level's heartbeats.
    """
    s = ctx.s
    levels = s.levels
    out: dict[str, Any] = {"levels": {}}
    server_cm = ctx.echo() if system == "echo" else ctx.sessiond()
    procs: list[Proc] = []
    probe = ["unary:1"] if system == "echo" else ["cc:1"]

    def measure(server: Proc, target: str) -> dict[str, Any]:
        time.sleep(min(1.0, s.idle_seconds))
        # RSS before the probe: the probe's closed sessions stay readable for the retention period
        # (10 min) and are not memory of the workers being counted.
        rss = rss_kb(server.pid)
        idle = _idle_cores(server.pid, s.idle_seconds)
        result = ctx.phases(target, probe, server, warmup=s.probe_warmup, duration=s.probe_duration,
                            queue="scale")[probe[0]]
        part = result if system == "echo" else (result.get("create") or {})
        return {"rss_kb": rss, "idle_server_cores": idle, "p50_ms": part.get("p50_ms"),
                "p99_ms": part.get("p99_ms"), "ops_per_s": result["ops_per_s"],
                "errors": sum(result["errors"].values())}

    with server_cm as (server, target):
        try:
            out["rss_start_kb"] = rss_kb(server.pid)
            connected = 0
            for i, level in enumerate(levels):
                # The first workers take the sessions (capacity sessions / levels[0] each); the rest hold 1.
                capacity = max(1, s.sessions // level) if connected == 0 else 1
                ctx.say(f"scale {system}: {connected} → {level} streams")
                started = time.monotonic()
                procs += ctx.start_workers(target, level - connected, kind=system, queue="scale",
                                           capacity=capacity, separate=True)
                open_s = round(time.monotonic() - started, 2)
                connected = level
                out["levels"][str(level)] = {**measure(server, target), "open_s": open_s,
                                             "sessions": out.get("sessions", {}).get("count", 0)}
                if system != "echo" and i == 1:
                    ctx.say(f"scale sessiond: opening {s.sessions} sessions")
                    before = out["levels"][str(level)]["rss_kb"]
                    fill = ctx.loadgen("fill", ["fill", "--target", target, "--task-queue", "scale",
                                                "--count", str(s.sessions), "--concurrency", "64"],
                                       timeout=120 + s.sessions / 200)
                    after = measure(server, target)
                    out["sessions"] = {"count": s.sessions, "workers": level, "rss_before_kb": before,
                                       "rss_after_kb": after["rss_kb"], "fill_s": fill["seconds"],
                                       "fill_per_s": fill["per_s"], "fill_errors": fill["errors"], **after}
        finally:
            ctx.stop_all(procs)
    return out


def scenario_scale(ctx: Ctx) -> dict[str, Any]:
    """10 / 1,000 / 10,000 connected workers and up to 100,000 open sessions vs. echo with as many streams."""
    s = ctx.s
    runs = []
    for r in range(s.scale_runs):
        run = {}
        for system in (("echo", "sessiond") if r % 2 == 0 else ("sessiond", "echo")):
            ctx.say(f"scale run {r + 1}/{s.scale_runs}: {system}")
            run[system] = _scale_run(ctx, system)
        runs.append(run)
    base, mid, top = (str(x) for x in (s.levels[0], s.levels[1], s.levels[-1]))
    sd = [run["sessiond"]["levels"] for run in runs]
    ec = [run["echo"]["levels"] for run in runs]
    sess = [run["sessiond"]["sessions"] for run in runs]
    cases = []

    def p50_case(label: str, values: list[Any], echo_key: str | None) -> dict[str, Any]:
        bases = [x[base]["p50_ms"] for x in sd]
        ratios = [ratio(v["p50_ms"], b) for v, b in zip(values, bases, strict=True)]
        details: dict[str, list[Any]] = {"create_p99_ms": [v["p99_ms"] for v in values],
                                         "idle_server_cores": [v["idle_server_cores"] for v in values]}
        if echo_key is not None:
            echo_ratios = [ratio(x[echo_key]["p50_ms"], x[base]["p50_ms"]) for x in ec]
            details.update({
                "echo_unary_p50_ms": [x[echo_key]["p50_ms"] for x in ec],
                f"echo_ratio_to_{base}_streams": echo_ratios,
                "ratio_over_echo_ratio": [ratio(a, b) for a, b in zip(ratios, echo_ratios, strict=True)],
                "echo_idle_server_cores": [x[echo_key]["idle_server_cores"] for x in ec]})
        return case(label, value=[v["p50_ms"] for v in values], unit="ms", baseline=bases, baseline_unit="ms",
                    baseline_what=f"sessiond at {base} workers, no sessions", ratios=ratios, goal="≤ 1.2×",
                    check=lambda v: v <= 1.2, details=details)

    cases.append(p50_case(f"create p50 at {int(mid):,} workers", [x[mid] for x in sd], mid))
    cases.append(p50_case(f"create p50 at {int(mid):,} workers + {s.sessions:,} open sessions", sess, None))
    cases.append(p50_case(f"create p50 at {int(top):,} workers + {s.sessions:,} open sessions",
                          [x[top] for x in sd], top))

    def per_stream(levels: dict[str, Any], lo: str, hi: str, lo_kb: int | None = None) -> float | None:
        a, b = levels[hi]["rss_kb"], levels[lo]["rss_kb"] if lo_kb is None else lo_kb
        return None if a is None or b is None else (a - b) / (int(hi) - int(lo))

    for lo, hi in ((base, mid), (mid, top)):
        sd_kb = [per_stream(run["sessiond"]["levels"], lo, hi,
                            run["sessiond"]["sessions"]["rss_after_kb"] if lo == mid else None) for run in runs]
        ec_kb = [per_stream(run["echo"]["levels"], lo, hi) for run in runs]
        cases.append(case(
            f"server RSS per worker, {int(lo):,} → {int(hi):,} workers", value=sd_kb, unit="KB/worker",
            baseline=ec_kb, baseline_unit="KB/stream", baseline_what="echo, idle bidi stream on its own connection",
            ratios=[ratio(a, b) for a, b in zip(sd_kb, ec_kb, strict=True)], goal="≤ 45 KB/worker",
            check=lambda v: v <= 45.0, check_on="value",
            details={"rss_mb": [round(run["sessiond"]["levels"][hi]["rss_kb"] / 1024, 1) for run in runs],
                     "echo_rss_mb": [round(run["echo"]["levels"][hi]["rss_kb"] / 1024, 1) for run in runs],
                     "open_s": [run["sessiond"]["levels"][hi]["open_s"] for run in runs],
                     "echo_open_s": [run["echo"]["levels"][hi]["open_s"] for run in runs]}))
    per_session = [(x["rss_after_kb"] - x["rss_before_kb"]) / x["count"] for x in sess]
    cases.append(case(
        f"server RSS per open session ({s.sessions:,} sessions on {int(mid):,} workers)", value=per_session,
        unit="KB/session", baseline=[None] * len(sess), baseline_unit="", baseline_what="— (no echo equivalent)",
        ratios=[None] * len(sess), goal="≤ 2 KB/session", check=lambda v: v <= 2.0, check_on="value",
        details={"fill_per_s": [x["fill_per_s"] for x in sess],
                 "rss_after_mb": [round(x["rss_after_kb"] / 1024, 1) for x in sess]}))
    return entry("scale", "create p50 vs. the 10-worker case; server RSS per worker and per session", cases, runs)


# --------------------------------------------------------------------- scenario: tracing


def scenario_tracing(ctx: Ctx) -> dict[str, Any]:
    """Throughput with tracing on (ours, and OpenTelemetry's interceptor) vs. off, in the same run."""
    s = ctx.s
    n = s.tracing_in_flight
    variants = ["off", "ours", "otel"]
    runs = []
    for r in range(s.tracing_runs):
        run: dict[str, Any] = {}
        order = variants[r % 3:] + variants[:r % 3]
        for variant in order:
            ctx.say(f"tracing run {r + 1}/{s.tracing_runs}: {variant}")
            with ctx.sessiond(tracing=variant) as (server, target):
                workers = ctx.start_workers(target, 1, capacity=1000)
                try:
                    phases = ctx.phases(target, [f"cc:{n}", f"activity:{n}"], server, workers[0])
                finally:
                    ctx.stop_all(workers)
                server.stop()  # SIGTERM: it flushes its provider and reports how many spans it made
                spans = None
                with contextlib.suppress(ChildError):
                    spans = server.wait_event("spans", 1.0)["exported"]
            run[variant] = {
                "cc_pairs_per_s": phases[f"cc:{n}"]["ops_per_s"],
                "activity_per_s": phases[f"activity:{n}"]["ops_per_s"],
                "cc_server_us": phases[f"cc:{n}"].get("server_us_per_op"),
                "activity_server_us": phases[f"activity:{n}"].get("server_us_per_op"),
                "spans_exported": spans,
            }
        ctx.say(f"tracing run {r + 1}/{s.tracing_runs}: echo")
        with ctx.echo() as (server, target):
            run["echo_rps"] = ctx.phases(target, [f"unary:{n}"], server)[f"unary:{n}"]["ops_per_s"]
        runs.append(run)
    cases = []
    for key, label in (("cc_pairs_per_s", "create+complete"), ("activity_per_s", "execute_activity")):
        us_key = "cc_server_us" if key.startswith("cc") else "activity_server_us"
        for variant, goal in (("ours", "≥ 0.8"), ("otel", "— (comparison)")):
            cases.append(case(
                f"{label}, {n} in flight: {'hand-written spans' if variant == 'ours' else 'OTel aio interceptor'}",
                value=[run[variant][key] for run in runs], unit="/s", baseline=[run["off"][key] for run in runs],
                baseline_unit="/s", baseline_what="sessiond, tracing off",
                ratios=[ratio(run[variant][key], run["off"][key]) for run in runs], goal=goal,
                check=(lambda v: v >= 0.8) if variant == "ours" else None,
                details={"server_us_per_op": [run[variant][us_key] for run in runs],
                         "server_us_per_op_off": [run["off"][us_key] for run in runs],
                         "spans_exported": [run[variant]["spans_exported"] for run in runs],
                         "ours_vs_otel": [ratio(run["ours"][key], run["otel"][key]) for run in runs],
                         "echo_rps": [run["echo_rps"] for run in runs]}))
    return entry("tracing on vs. off", "throughput with an SDK provider (always_on, batch, dropping exporter) / off",
                 cases, runs)


# --------------------------------------------------------------------- scenario: dashboard


def scenario_dashboard(ctx: Ctx) -> dict[str, Any]:
    """Create+complete at 64 in flight with the dashboard page open vs. closed, in pairs on one server.

    One sessiond with the dashboard on, one worker, and one simulated page (``bench.ui_poller``:
    the page's requests at the page's rate) that is resumed for the "open" phase of each pair and
    paused for the "closed" one. Pairs alternate which phase goes first, so machine drift and
    the table's growth (completed sessions stay readable for the retention period) spread over both.
    """
    s = ctx.s
    ui_port = free_port()
    pairs: list[dict[str, Any]] = []
    with ctx.sessiond(ui_port=ui_port) as (server, target):
        workers = ctx.start_workers(target, 1, capacity=1000)
        poller = Proc(ctx.name("ui-poller"), [PY, "-m", "bench.ui_poller", "--url", f"http://127.0.0.1:{ui_port}",
                                              "--start-paused"], ctx.logs)
        try:
            poller.wait_event("ready", 30)
            ctx.say("dashboard: warming the server up (not measured)")
            ctx.phases(target, ["cc:64"], server, workers[0])
            for r in range(s.dashboard_runs):
                pair: dict[str, Any] = {}
                for variant in (("closed", "open") if r % 2 == 0 else ("open", "closed")):
                    ctx.say(f"dashboard pair {r + 1}/{s.dashboard_runs}: page {variant}")
                    if variant == "open":
                        poller.send(signal.SIGUSR1)
                        poller.wait_event("resumed", 10)
                    phase = ctx.phases(target, ["cc:64"], server, workers[0])["cc:64"]
                    pair[variant] = {"pairs_per_s": phase["ops_per_s"],
                                     "server_us_per_pair": phase.get("server_us_per_op"),
                                     "p50_ms": phase["p50_ms"], "p99_ms": phase["p99_ms"],
                                     "errors": sum(phase["errors"].values())}
                    if variant == "open":
                        poller.send(signal.SIGUSR2)
                        paused = poller.wait_event("paused", 10)
                        pair[variant].update({"polls": paused["polls"], "poll_errors": paused["errors"],
                                              "poll_p50_ms": paused["poll"]["p50_ms"],
                                              "poll_p99_ms": paused["poll"]["p99_ms"]})
                pairs.append(pair)
            idle = _dashboard_idle_cost(ctx, server, poller)
        finally:
            poller.stop()
            ctx.stop_all(workers)

    def column(variant: str, key: str) -> list[Any]:
        return [pair[variant].get(key) for pair in pairs]

    row = case(
        f"create+complete, 64 in flight: page open (polling every {POLL_INTERVAL_MS} ms)",
        value=column("open", "pairs_per_s"), unit="pairs/s", baseline=column("closed", "pairs_per_s"),
        baseline_unit="pairs/s", baseline_what="same server, page closed",
        ratios=[ratio(p["open"]["pairs_per_s"], p["closed"]["pairs_per_s"]) for p in pairs],
        goal="≥ 0.95", check=lambda v: v >= 0.95,
        details={"server_us_per_pair": column("open", "server_us_per_pair"),
                 "server_us_per_pair_closed": column("closed", "server_us_per_pair"),
                 "server_cpu_ratio": [ratio(p["open"]["server_us_per_pair"], p["closed"]["server_us_per_pair"])
                                      for p in pairs],
                 "p99_ms": column("open", "p99_ms"), "p99_ms_closed": column("closed", "p99_ms"),
                 "polls": column("open", "polls"), "poll_errors": column("open", "poll_errors"),
                 "poll_p50_ms": column("open", "poll_p50_ms"), "poll_p99_ms": column("open", "poll_p99_ms"),
                 "errors": [p["open"]["errors"] + p["closed"]["errors"] for p in pairs]})
    per_poll = case(
        "server CPU per poll of the page (3 requests), server idle", value=[idle["cpu_ms_per_poll"]],
        unit="ms", baseline=[idle["closed_cores"] * 1e3], baseline_unit="ms/s",
        baseline_what="the idle server's own CPU, page closed", ratios=[None], goal="— (explains the row above)",
        check=None, details={"open_cores": [idle["open_cores"]], "closed_cores": [idle["closed_cores"]],
                             "share_of_a_core_while_open": [idle["share_of_a_core"]], "polls": [idle["polls"]],
                             "window_s": [idle["window_s"]]})
    return entry("operator dashboard", "create+complete throughput with the page open / closed, same server, "
                 "paired phases; and what one poll costs the server", [row, per_poll], pairs, idle=idle)


def _dashboard_idle_cost(ctx: Ctx, server: Proc, poller: Proc) -> dict[str, Any]:
    """Server CPU over an idle window with the page closed, then open: the CPU one poll costs.

    Much less noisy than throughput on a shared machine: it needs no load, only /proc's CPU counters
    (10 ms ticks, so the full run's 9 s windows resolve about 1 ms per poll).
    """
    window = 3 * ctx.s.duration  # /proc counts CPU in 10 ms ticks: about 10 polls per window in the full run

    def cores() -> float:
        before, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(window)
        after, elapsed = cpu_seconds(server.pid), time.monotonic() - t0
        if before is None or after is None:
            raise ChildError("the server exited during the dashboard's idle window")
        return (after - before) / elapsed

    ctx.say(f"dashboard: idle server CPU, page closed then open ({window:g} s each)")
    closed = cores()
    poller.send(signal.SIGUSR1)
    poller.wait_event("resumed", 10)
    opened = cores()
    poller.send(signal.SIGUSR2)
    polls = poller.wait_event("paused", 10)["polls"]
    extra = max(0.0, opened - closed) * window
    return {"window_s": window, "closed_cores": round(closed, 5), "open_cores": round(opened, 5), "polls": polls,
            "cpu_ms_per_poll": round(extra / polls * 1e3, 3) if polls else None,
            "share_of_a_core": round(max(0.0, opened - closed), 5)}


# --------------------------------------------------------------------- main


def _meta(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "command": "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m bench",
        "mode": "smoke" if args.smoke else "full",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "mem_gb": round(mem_gb, 1), "kernel": platform.release(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("grpcio", "protobuf", "opentelemetry-sdk",
                                             "opentelemetry-instrumentation-grpc")},
        "git": _git_head(),
        "sizes": asdict(sizes),
    }


def _git_head() -> str:
    # `git rev-parse` first: in a worktree .git is a file that points elsewhere.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()[:12]
    with contextlib.suppress(OSError), open(REPO / ".git" / "HEAD") as f:
        head = f.read().strip()
        if head.startswith("ref: "):
            ref = REPO / ".git" / head[5:]
            with contextlib.suppress(OSError):
                return ref.read_text().strip()[:12]
            return head[5:]
        return head[:12]
    return ""


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every scenario ran (goals missed are reported, not failures)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: proves the scripts still work")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for results.json and RESULTS.md [bench/ for a full run, bench/out/smoke/ "
                             "for --smoke]")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--runs", type=int, default=0, help="override every scenario's number of repetitions")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--before", type=Path, default=None, metavar="DIR",
                        help="activity scenario: also measure the sessiond of this checkout (e.g. `git archive "
                             "<commit> | tar -x -C DIR`) in the same run, as the 'before' of a change")
    parser.add_argument("--loops", default="", help="activity scenario: also measure with these event loops "
                                                    "(comma-separated, e.g. uvloop)")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only re-render RESULTS.md (next to the JSON) from an earlier run, e.g. after editing "
                             "bench/notes.md")
    args = parser.parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        md = args.render.parent / "RESULTS.md"
        md.write_text(report.markdown(results, notes=REPO / "bench" / "notes.md"))
        print(report.table(results))
        print(f"\nwrote {md}")
        return 0
    sizes = SMOKE if args.smoke else FULL
    if args.runs:
        sizes = replace(sizes, core_reps=args.runs, kill_runs=args.runs, frozen_runs=args.runs,
                        scale_runs=args.runs, tracing_runs=args.runs, dashboard_runs=args.runs,
                        outlive_runs=args.runs, resource_runs=args.runs, auth_runs=args.runs, replica_reps=args.runs,
                        failover_trials=max(args.runs, 10))
    out_dir = args.out or (REPO / "bench" / "out" / "smoke" if args.smoke else REPO / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = (out_dir / "logs") if args.out else (REPO / "bench" / "out" / ("smoke-logs" if args.smoke else "logs"))
    logs.mkdir(parents=True, exist_ok=True)
    only = [x for x in args.only.split(",") if x] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    _raise_nofile()
    if args.before is not None and not (args.before / "sessiond" / "__init__.py").exists():
        parser.error(f"--before {args.before}: not a checkout of sessiond")
    ctx = Ctx(sizes, logs, verbose=not args.quiet, before=args.before.resolve() if args.before else None,
              loops=tuple(x for x in args.loops.split(",") if x))
    results: dict[str, Any] = {"meta": _meta(args, sizes), "scenarios": {}}
    json_path = out_dir / "results.json"
    md_path = out_dir / "RESULTS.md"
    started = time.monotonic()
    runners: dict[str, Callable[[Ctx], Any]] = {
        "core": scenario_core, "activity": scenario_activity, "kill9": scenario_kill9,
        "frozen_worker": scenario_frozen, "scale": scenario_scale,
        "tracing": scenario_tracing, "dashboard": scenario_dashboard, "outlive": scenario_outlive,
        "resources": scenario_resources, "auth": scenario_auth, "replicas": scenario_replicas,
    }
    failed = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for name in SCENARIOS:
            if name not in only:
                continue
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                produced = runners[name](ctx)
            except ChildError as exc:
                print(f"!! scenario {name} failed: {exc}", file=sys.stderr, flush=True)
                failed.append(name)
                Proc.stop_all()
                continue
            elapsed = round(time.monotonic() - t0, 1)
            if name in MULTI_ROW:
                for key, value in produced.items():
                    results["scenarios"][key] = {**value, "seconds": elapsed}
            else:
                results["scenarios"][name] = {**produced, "seconds": elapsed}
            results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
            json_path.write_text(json.dumps(results, indent=1, default=_round) + "\n")
    finally:
        Proc.stop_all()
    results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["failed"] = failed
    json_path.write_text(json.dumps(_rounded(results), indent=1) + "\n")
    table = report.table(results)
    print()
    print(table)
    md_path.write_text(report.markdown(results, notes=(REPO / "bench" / "notes.md")))
    print(f"\nwrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path} and "
          f"{md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path} "
          f"in {results['meta']['total_seconds']:.0f} s")
    return 1 if failed else 0


def _round(value: Any) -> Any:
    return str(value)


def _rounded(value: Any) -> Any:
    """Round floats to 4 significant-ish digits so the JSON stays small and readable."""
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


__all__ = ["RESULT_KEYS", "main"]
