"""The replicas scenario (issue 12): sessiond on etcd next to ``--store memory`` in the same run.

The measuring is done by one child, :mod:`bench.replica_probe` (it starts the 3-member etcd, the
replicas and the workers); this module turns its result into three rows of the table. 3 replicas
against 1 on this 2-core box would not be a scaling figure (they share the cores with etcd and the
load generator), so none is reported; the per-replica CPU cost of a placement is (server µs per pair).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.procs import PY, run_once
from bench.stats import percentile, ratio

if TYPE_CHECKING:
    from bench.runner import Ctx


def scenario_replicas(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """create+complete on one etcd replica vs memory; forwarded vs direct activity; failover."""
    from bench.runner import case, entry

    s = ctx.s
    ctx.say(f"replicas: {s.replica_reps} reps against memory, {s.failover_trials} failovers")
    result = run_once(ctx.name("replica-probe"), [
        PY, "-m", "bench.replica_probe", "--reps", str(s.replica_reps), "--trials", str(s.failover_trials),
        "--leader-trials", str(s.leader_trials),
        "--warmup", str(s.warmup), "--duration", str(s.duration), "--logs", str(ctx.logs)],
        ctx.logs, timeout=300 + s.replica_reps * 60 + s.failover_trials * 30 + s.leader_trials * 60)

    cc_cases, cc_runs = [], []
    for n in (1, 64):
        rows = [{"etcd_pairs_per_s": rep["etcd"][f"cc:{n}"]["ops_per_s"],
                 "memory_pairs_per_s": rep["memory"][f"cc:{n}"]["ops_per_s"],
                 "ratio": ratio(rep["etcd"][f"cc:{n}"]["ops_per_s"], rep["memory"][f"cc:{n}"]["ops_per_s"]),
                 "etcd_p50_ms": rep["etcd"][f"cc:{n}"]["p50_ms"], "memory_p50_ms": rep["memory"][f"cc:{n}"]["p50_ms"],
                 "etcd_create_p50_ms": rep["etcd"][f"cc:{n}"].get("create", {}).get("p50_ms"),
                 "replica_us_per_pair": rep["etcd"][f"cc:{n}"].get("server_us_per_op"),
                 "memory_us_per_pair": rep["memory"][f"cc:{n}"].get("server_us_per_op"),
                 "errors": sum(rep["etcd"][f"cc:{n}"]["errors"].values())}
                for rep in result["throughput"]]
        cc_runs.append({"in_flight": n, "reps": rows})
        cc_cases.append(case(
            f"{n} in flight", value=[x["etcd_pairs_per_s"] for x in rows], unit="pairs/s",
            baseline=[x["memory_pairs_per_s"] for x in rows], baseline_unit="pairs/s",
            baseline_what="--store memory, same run", ratios=[x["ratio"] for x in rows],
            goal="report (design estimate ≈ 0.95)", check=None,
            details={k: [x[k] for x in rows] for k in ("etcd_p50_ms", "memory_p50_ms", "etcd_create_p50_ms",
                                                       "replica_us_per_pair", "memory_us_per_pair", "errors")}))

    fw = [{"forwarded_p50_ms": r["forwarded"]["p50_ms"], "direct_p50_ms": r["direct"]["p50_ms"],
           "ratio": ratio(r["forwarded"]["p50_ms"], r["direct"]["p50_ms"]),
           "forwarded_p99_ms": r["forwarded"]["p99_ms"], "direct_p99_ms": r["direct"]["p99_ms"]}
          for r in result["forwarded"]]
    fw_case = case("1 in flight", value=[x["forwarded_p50_ms"] for x in fw], unit="ms p50",
                   baseline=[x["direct_p50_ms"] for x in fw], baseline_unit="ms p50",
                   baseline_what="the same activity on the owner replica", ratios=[x["ratio"] for x in fw],
                   goal="report (one extra hop)", check=None,
                   details={k: [x[k] for x in fw] for k in ("forwarded_p99_ms", "direct_p99_ms")})

    trials = result["failover"]
    adopted = [t["adopted_ms"] for t in trials]
    fo_case = case(f"kill -9 of the owner replica, n={len(adopted)}", value=[percentile(adopted, 50)],
                   unit="ms p50", baseline=[max(adopted)], baseline_unit="ms max",
                   baseline_what="max over the trials (not a baseline: no same-run equivalent)",
                   ratios=[None], goal="sessions stay OPEN (same ids)", check=None,
                   details={"adopted_ms": adopted, "open_after": [all(t["same_session_open"] for t in trials)]})
    fo_case["met"] = all(t["same_session_open"] for t in trials)
    leader = result["leader_kill"]
    again = [t["writes_again_ms"] for t in leader]
    lk_case = case(f"kill -9 of the etcd leader, n={len(again)}", value=[percentile(again, 50)], unit="ms p50",
                   baseline=[max(again)], baseline_unit="ms max",
                   baseline_what="max over the trials (not a baseline: no same-run equivalent)", ratios=[None],
                   goal="writes succeed again; the replica lives", check=None,
                   details={"writes_again_ms": again, "failed_attempts": [t["failed_attempts"] for t in leader],
                            "replica_alive": [t["replica_alive"] for t in leader]})
    lk_case["met"] = all(t["replica_alive"] for t in leader)
    version = result.get("etcd_version", "")
    return {
        "replicas_create_complete": entry(
            "create + complete, 1 replica on a 3-member etcd", f"pairs/s vs. --store memory ({version})",
            cc_cases, cc_runs),
        "replicas_forwarded": entry("execute_activity through a non-owner replica",
                                    "p50 vs. the owner replica", [fw_case], fw),
        "replicas_failover": entry("failover: kill -9 of the replica owning a worker",
                                   "kill → worker owned by a live replica, session OPEN, same id (ms)",
                                   [fo_case], trials),
        "replicas_leader_kill": entry("etcd leader kill during create+complete, 1 replica",
                                      "kill -9 of the leader → the first pair started after it completes (ms)",
                                      [lk_case], leader),
    }
