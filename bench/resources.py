"""Scenario for resources and placement constraints (issue 11): what labels, resources and a selector
cost a CreateSession.

Orchestration only (no grpc here). One sessiond holds two fleets of ``resource_workers`` raw-protocol
workers each: ``plain`` (sessions only, no labels: today's placement) and ``res`` (``gpu`` 8 and
``scratch_gb`` 1000 each, in 10 label sets). Fresh load-generator processes then alternate
CreateSession + CompleteSession at 1 in flight on each: sessions only on ``plain``, against
``{"gpu": 1, "scratch_gb": 100}`` with the selector ``zone=z3,gpu_model in (a100,h100)`` on
``res``. Both fleets heartbeat through both measurements, so the server's load is the same; the
figure is the create p50 ratio, paired per repetition. ``bench.placement_probe`` adds the core's
own cost of the same two shapes, in process.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from bench.procs import PY, run_once
from bench.stats import ratio

if TYPE_CHECKING:
    from bench.runner import Ctx

LABEL_SETS = 10
CAPACITIES = ("gpu=8", "scratch_gb=1000")
ASKS = ("--resource", "gpu=1", "--resource", "scratch_gb=100", "--selector", "zone=z3,gpu_model in (a100,h100)")


def _run(ctx: Ctx) -> dict[str, Any]:
    """One server, both fleets, ``resource_reps`` alternating pairs of probes."""
    s = ctx.s
    out: dict[str, Any] = {"plain": [], "res": []}
    with ctx.sessiond() as (server, target):
        procs = ctx.start_workers(target, s.resource_workers, queue="plain", capacity=1000)
        try:
            procs += ctx.start_workers(target, s.resource_workers, queue="res", capacity=1000, resources=CAPACITIES,
                                       label_sets=LABEL_SETS)
            time.sleep(min(1.0, s.idle_seconds))
            for rep in range(s.resource_reps):
                for variant in (("plain", "res") if rep % 2 == 0 else ("res", "plain")):
                    result = ctx.phases(target, ["cc:1"], server, queue=variant, warmup=s.probe_warmup,
                                        duration=s.probe_duration, extra=ASKS if variant == "res" else ())["cc:1"]
                    create = result.get("create") or {}
                    out[variant].append({"p50_ms": create.get("p50_ms"), "p99_ms": create.get("p99_ms"),
                                         "ops_per_s": result["ops_per_s"], "errors": sum(result["errors"].values())})
        finally:
            ctx.stop_all(procs)
    return out


def scenario_resources(ctx: Ctx) -> dict[str, Any]:
    """Create p50 with 2 resources and a selector on workers in 10 label sets vs sessions only, same server."""
    from bench.runner import case, entry

    s = ctx.s
    runs = []
    for r in range(s.resource_runs):
        ctx.say(f"resources run {r + 1}/{s.resource_runs}: {s.resource_workers:,} + {s.resource_workers:,} workers")
        runs.append(_run(ctx))
    plain = [x for run in runs for x in run["plain"]]
    res = [x for run in runs for x in run["res"]]
    ctx.say("resources: the core's share, in process")
    probe = run_once(ctx.name("placement-probe"), [PY, "-m", "bench.placement_probe", "--workers",
                                                   str(s.resource_workers), "--label-sets", str(LABEL_SETS),
                                                   "--ops", str(s.probe_ops), "--blocks", "7"], ctx.logs, 300)
    workers = f"{s.resource_workers:,}"
    cases = [
        case(f"create p50, {workers} workers in {LABEL_SETS} label sets, 2 resources + a selector",
             value=[x["p50_ms"] for x in res], unit="ms", baseline=[x["p50_ms"] for x in plain], baseline_unit="ms",
             baseline_what=f"sessions-only create at {workers} workers, same server, alternating",
             ratios=[ratio(a["p50_ms"], b["p50_ms"]) for a, b in zip(res, plain, strict=True)], goal="≤ 1.2×",
             check=lambda v: v <= 1.2,
             details={"create_p99_ms": [x["p99_ms"] for x in res], "baseline_p99_ms": [x["p99_ms"] for x in plain],
                      "errors": [x["errors"] for x in res + plain]}),
        case("core create + complete, same two shapes, in process (CPU)", value=probe["res_us"], unit="µs",
             baseline=probe["plain_us"], baseline_unit="µs", baseline_what="sessions only, same table",
             ratios=[ratio(a, b) for a, b in zip(probe["res_us"], probe["plain_us"], strict=True)],
             goal="— (the RPC hides it)", check=None,
             details={"median_ratio": [round(statistics.median(probe["res_us"]) /
                                             statistics.median(probe["plain_us"]), 3)],
                      "min_ratio": [round(probe["res_min_us"] / probe["plain_min_us"], 3)]}),
    ]
    return entry("resources", "create p50 with resources and a selector vs sessions only, same server", cases, runs,
                 probe=probe)
