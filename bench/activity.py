"""Scenario ``activity``: the activity round trip against its protocol floor, and the library worker.

Per repetition (the order of the blocks alternates):

* the floor: the echo service's ``Relay`` (the same message pattern as ExecuteActivity on an
  empty service, ``bench/echo_server.py``) at 1 and 64 in flight;
* for each *variant* of sessiond (this tree; with ``--before DIR`` also that checkout, e.g. the
  commit before a change, so before and after are measured in the same run; with ``--loops``
  also this tree on another event loop): one server with three workers on three task queues —
  the raw-stub worker (``bench.worker``), the library ``SessionWorker`` with an ``async`` no-op
  activity, and one with a sync no-op activity (run in its thread pool) — and ExecuteActivity at
  1 and 64 in flight against each of them, each phase reading the server's and that worker's CPU.

Every activity carries the same 100-byte input tagged ``binary/plain`` (what the library's
converter makes of one ``bytes`` argument), so the raw and the library worker get identical tasks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import PY, REPO, Proc, free_port, wait_port
from bench.stats import ratio

if TYPE_CHECKING:
    from bench.runner import Ctx

WORKER_KINDS = ("raw", "lib_async", "lib_sync")
# An offered rate every system sustains on this box: CPU per activity compared at the same throughput
# (at 64 in flight each system runs as fast as it can, and CPU per call falls as batching grows).
FIXED_RATE = 300


def _sync_bench(tree: Path) -> None:
    """The before tree runs this tree's bench scripts (only sessiond and its client differ)."""
    shutil.copytree(REPO / "bench", tree / "bench", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("out", "__pycache__", "*.json", "*.md", "*.svg"))


def _variants(ctx: Ctx) -> list[tuple[str, Path | None, tuple[str, ...]]]:
    """(label, tree, event-loop arguments) of every sessiond variant measured."""
    out: list[tuple[str, Path | None, tuple[str, ...]]] = []
    if ctx.before is not None:
        _sync_bench(ctx.before)
        out.append(("before", ctx.before, ()))
    out.append(("after", None, ()))
    for loop in ctx.loops:
        if loop != "asyncio":
            out.append((loop, None, ("--loop", loop)))
    return out


def _phases(ctx: Ctx, target: str, queue: str, server: Proc, worker: Proc) -> dict[str, Any]:
    s = ctx.s
    args = ["run", "--target", target, "--phases", f"activity:1,activity:64,activity:64@{FIXED_RATE}",
            "--warmup", str(s.warmup),
            "--duration", str(s.duration), "--server-pid", str(server.pid), "--worker-pid", str(worker.pid),
            "--task-queue", queue, "--payload", "binary"]
    result = ctx.loadgen(f"activity-{queue}", args, timeout=60 + 3 * (s.warmup + s.duration) * 3)
    return {p["phase"]: p for p in result["phases"]}


def _sessiond_block(ctx: Ctx, label: str, tree: Path | None, loop: tuple[str, ...], r: int) -> dict[str, Any]:
    port = free_port()
    server = Proc(ctx.name(f"sessiond-{label}"), [PY, "-m", "sessiond", "serve", "--listen", f"127.0.0.1:{port}",
                                                  "--log-level", "WARNING", *loop], ctx.logs, tree=tree)
    procs: dict[str, Proc] = {}
    try:
        wait_port(port, server, 30)
        target = f"127.0.0.1:{port}"
        procs["raw"] = Proc(ctx.name(f"raw-worker-{label}"), [
            PY, "-m", "bench.worker", "--target", target, "--kind", "sessiond", "--task-queue", "raw", "--streams",
            "1", "--capacity", "1000", "--separate-channels"], ctx.logs, tree=tree)
        for kind in ("async", "sync"):
            procs[f"lib_{kind}"] = Proc(ctx.name(f"lib-worker-{kind}-{label}"), [
                PY, "-m", "bench.lib_workers", "--target", target, "--task-queue", f"lib_{kind}", "--count", "1",
                "--capacity", "1000", "--noop", kind, "--prefix", f"lib-{kind}", *loop], ctx.logs, tree=tree)
        for proc in procs.values():
            proc.wait_event("ready", 60)
        out: dict[str, Any] = {}
        order = WORKER_KINDS[r % 3:] + WORKER_KINDS[:r % 3]  # which worker goes first rotates
        for kind in order:
            ctx.say(f"activity rep {r + 1}/{ctx.s.core_reps}: sessiond {label}, {kind} worker")
            out[kind] = _phases(ctx, target, kind, server, procs[kind])
        return out
    finally:
        ctx.stop_all(list(procs.values()))
        server.stop()


def _echo_block(ctx: Ctx, r: int, loop: str = "asyncio") -> dict[str, Any]:
    ctx.say(f"activity rep {r + 1}/{ctx.s.core_reps}: echo Relay (the floor), {loop}")
    with ctx.echo(loop) as (server, target):
        workers = ctx.start_workers(target, 1, kind="echo-worker")
        try:
            return ctx.phases(target, ["relay:1", "relay:64", f"relay:64@{FIXED_RATE}", "unary:1", "unary:64"], server,
                              workers[0])
        finally:
            ctx.stop_all(workers)


def _us(phase: dict[str, Any], who: str) -> float | None:
    """CPU µs of ``who`` (server / worker) per activity in ``phase``."""
    cores = (phase.get("cpu_cores") or {}).get(who)
    rate = phase.get("ops_per_s") or 0
    return round(cores / rate * 1e6, 1) if cores is not None and rate > 0 else None


def _row(rep: dict[str, Any], label: str) -> dict[str, Any]:
    # A variant on another event loop is held to the floor on that loop.
    echo, sd = rep.get(f"echo-{label}", rep["echo"]), rep[label]
    r1, r64, fixed = echo["relay:1"], echo["relay:64"], echo[f"relay:64@{FIXED_RATE}"]
    row: dict[str, Any] = {
        "floor_server_us_fixed": _us(fixed, "server"), "floor_worker_us_fixed": _us(fixed, "worker"),
        "floor_per_s_fixed": fixed["ops_per_s"],
        "floor_p50_ms": r1["p50_ms"], "floor_per_s": r64["ops_per_s"], "floor_server_us": _us(r64, "server"),
        "floor_worker_us": _us(r64, "worker"), "echo_p50_ms": echo["unary:1"]["p50_ms"],
        "echo_per_s": echo["unary:64"]["ops_per_s"],
    }
    for kind in WORKER_KINDS:
        one, many, at = sd[kind]["activity:1"], sd[kind]["activity:64"], sd[kind][f"activity:64@{FIXED_RATE}"]
        row[kind] = {"server_us_fixed": _us(at, "server"), "worker_us_fixed": _us(at, "worker"),
                     "per_s_fixed": at["ops_per_s"],
                     "p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], "per_s": many["ops_per_s"],
                     "p50_64_ms": many["p50_ms"], "server_us": _us(many, "server"), "worker_us": _us(many, "worker"),
                     "worker_us_1": _us(one, "worker"), "server_us_1": _us(one, "server"),
                     "errors": sum(one["errors"].values()) + sum(many["errors"].values()) + sum(at["errors"].values())}
    return row


def scenario_activity(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """The activity floor rows and the library-worker rows (see the module docstring)."""
    from bench.runner import case, entry

    variants = _variants(ctx)
    reps: list[dict[str, Any]] = []
    for r in range(ctx.s.core_reps):
        rep: dict[str, Any] = {}
        blocks: list[Any] = ["echo", *(f"echo-{x}" for x in ctx.loops if x != "asyncio"), *variants]
        if r % 2:
            blocks.reverse()
        for block in blocks:
            if block == "echo":
                rep["echo"] = _echo_block(ctx, r)
            elif isinstance(block, str):
                rep[block] = _echo_block(ctx, r, block.removeprefix("echo-"))
            else:
                label, tree, loop = block
                rep[label] = _sessiond_block(ctx, label, tree, loop, r)
        reps.append(rep)

    floor_cases, lib_cases = [], []
    runs: dict[str, list[dict[str, Any]]] = {}
    for label, _, _ in variants:
        rows = [_row(rep, label) for rep in reps]
        runs[label] = rows
        tag = "" if label == "after" else f" [{label}]"
        judged = label == "after"
        raw = [x["raw"] for x in rows]
        if label not in ("before", "after"):  # another event loop: against asyncio, same run
            after = [_row(rep, "after") for rep in reps]
            floor_cases.append(case(
                f"64 in flight, raw worker: {label} / asyncio", value=[x["raw"]["per_s"] for x in rows],
                unit="activities/s", baseline=[x["raw"]["per_s"] for x in after], baseline_unit="/s",
                baseline_what="sessiond on asyncio, same run",
                ratios=[ratio(a["raw"]["per_s"], b["raw"]["per_s"]) for a, b in zip(rows, after, strict=True)],
                goal="— (> 1: faster)", check=None,
                details={"server_us_per_activity": [x["raw"]["server_us"] for x in rows],
                         "server_us_per_activity_asyncio": [x["raw"]["server_us"] for x in after],
                         "p50_1_in_flight_ms": [x["raw"]["p50_ms"] for x in rows],
                         "p50_1_in_flight_ms_asyncio": [x["raw"]["p50_ms"] for x in after],
                         "floor_per_s_asyncio": [x["floor_per_s"] for x in after]}))
        floor_cases.append(case(
            f"64 in flight, raw worker{tag}", value=[x["per_s"] for x in raw], unit="activities/s",
            baseline=[x["floor_per_s"] for x in rows], baseline_unit="/s", baseline_what="echo Relay, 64 in flight",
            ratios=[ratio(x["raw"]["per_s"], x["floor_per_s"]) for x in rows],
            goal="≥ 0.90" if judged else "— (comparison)", check=(lambda v: v >= 0.90) if judged else None,
            details={"server_us_per_activity": [x["server_us"] for x in raw],
                     "floor_server_us_per_activity": [x["floor_server_us"] for x in rows],
                     "server_us_ratio": [ratio(x["raw"]["server_us"], x["floor_server_us"]) for x in rows],
                     "p50_ms": [x["p50_64_ms"] for x in raw], "echo_unary_per_s": [x["echo_per_s"] for x in rows],
                     "errors": [x["errors"] for x in raw]}))
        floor_cases.append(case(
            f"server CPU per activity at {FIXED_RATE}/s offered, raw worker{tag}",
            value=[x["server_us_fixed"] for x in raw], unit="µs", baseline=[x["floor_server_us_fixed"] for x in rows],
            baseline_unit="µs", baseline_what=f"echo Relay server at {FIXED_RATE}/s",
            ratios=[ratio(x["raw"]["server_us_fixed"], x["floor_server_us_fixed"]) for x in rows],
            goal="— (≤ 1/0.90 would match the throughput goal)", check=None,
            details={"per_s": [x["per_s_fixed"] for x in raw], "floor_per_s": [x["floor_per_s_fixed"] for x in rows]}))
        floor_cases.append(case(
            f"p50, 1 in flight, raw worker{tag}", value=[x["p50_ms"] for x in raw], unit="ms",
            baseline=[x["floor_p50_ms"] for x in rows], baseline_unit="ms", baseline_what="echo Relay p50, 1 in flight",
            ratios=[ratio(x["raw"]["p50_ms"], x["floor_p50_ms"]) for x in rows],
            goal="≤ 1.10×" if judged else "— (comparison)", check=(lambda v: v <= 1.10) if judged else None,
            details={"p99_ms": [x["p99_ms"] for x in raw], "server_us_per_activity": [x["server_us_1"] for x in raw],
                     "echo_unary_p50_ms": [x["echo_p50_ms"] for x in rows]}))
        for kind, what in (("lib_async", "async"), ("lib_sync", "sync")):
            lib = [x[kind] for x in rows]
            goal_on = judged and kind == "lib_async"
            lib_cases.append(case(
                f"{what} no-op, {FIXED_RATE}/s offered: worker CPU per activity{tag}",
                value=[x["worker_us_fixed"] for x in lib], unit="µs",
                baseline=[x["raw"]["worker_us_fixed"] for x in rows], baseline_unit="µs",
                baseline_what="raw-stub worker, same server, same rate",
                ratios=[ratio(x[kind]["worker_us_fixed"], x["raw"]["worker_us_fixed"]) for x in rows],
                goal="≤ 1.2×" if goal_on else "— (comparison)", check=(lambda v: v <= 1.2) if goal_on else None,
                details={"per_s": [x["per_s_fixed"] for x in lib], "raw_per_s": [x["raw"]["per_s_fixed"] for x in rows],
                         "server_us_per_activity": [x["server_us_fixed"] for x in lib],
                         "raw_server_us_per_activity": [x["raw"]["server_us_fixed"] for x in rows]}))
            lib_cases.append(case(
                f"{what} no-op, 64 in flight: worker CPU per activity{tag}", value=[x["worker_us"] for x in lib],
                unit="µs", baseline=[x["raw"]["worker_us"] for x in rows], baseline_unit="µs",
                baseline_what="raw-stub worker, same server",
                ratios=[ratio(x[kind]["worker_us"], x["raw"]["worker_us"]) for x in rows],
                goal="— (comparison: each at its own throughput)", check=None,
                details={"worker_us_1_in_flight": [x["worker_us_1"] for x in lib],
                         "raw_worker_us_1_in_flight": [x["raw"]["worker_us_1"] for x in rows],
                         "server_us_per_activity": [x["server_us"] for x in lib],
                         "errors": [x["errors"] for x in lib]}))
            lib_cases.append(case(
                f"{what} no-op, 64 in flight: throughput{tag}", value=[x["per_s"] for x in lib],
                unit="activities/s", baseline=[x["raw"]["per_s"] for x in rows], baseline_unit="/s",
                baseline_what="raw-stub worker, same server",
                ratios=[ratio(x[kind]["per_s"], x["raw"]["per_s"]) for x in rows],
                goal="≥ 0.85" if goal_on else "— (comparison)", check=(lambda v: v >= 0.85) if goal_on else None,
                details={"p50_ms": [x["p50_64_ms"] for x in lib], "floor_per_s": [x["floor_per_s"] for x in rows]}))
            lib_cases.append(case(
                f"{what} no-op, p50 at 1 in flight{tag}", value=[x["p50_ms"] for x in lib], unit="ms",
                baseline=[x["raw"]["p50_ms"] for x in rows], baseline_unit="ms",
                baseline_what="raw-stub worker, same server",
                ratios=[ratio(x[kind]["p50_ms"], x["raw"]["p50_ms"]) for x in rows], goal="— (comparison)",
                check=None, details={"p99_ms": [x["p99_ms"] for x in lib]}))
    variant_text = ", ".join(label for label, _, _ in variants)
    return {
        "activity_floor": entry(
            "execute_activity vs. the protocol floor", "activities/s and p50 vs. echo Relay (the same message "
            f"pattern on an empty service), same run; variants: {variant_text}", floor_cases, runs["after"],
            variants=runs),
        "library_worker": entry(
            "library SessionWorker vs. raw-stub worker", "worker CPU per activity and throughput, same server, "
            f"same run; variants: {variant_text}", lib_cases, runs["after"]),
    }


__all__ = ["scenario_activity"]
