"""In-process placement cost: create + complete on the pure core, sessions-only vs resources + selector.

    python -m bench.placement_probe --workers 1000 --label-sets 10 --ops 5000 --blocks 5

One table holds both fleets: ``plain`` (sessions only, no labels) and ``res`` (``gpu`` 8 and
``scratch_gb`` 1000 each, ``--label-sets`` label sets round robin). Blocks of ``--ops`` create +
complete pairs alternate between the two shapes; each block's CPU µs per pair (process time, so
other processes on a shared machine disturb it less than wall time) is recorded. No grpc, no event
loop: this is the core's share of a CreateSession, which the end-to-end figure hides under the RPC's
cost. Prints one ``{"event": "result", ...}`` JSON line with every block and the minimum and
median per shape.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from bench.common import emit
from sessiond.core.model import Session, SessionOptions, WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.core.selector import parse_selector
from sessiond.core.table import SessionTable

SELECTOR = "zone=z3,gpu_model in (a100,h100)"


def _fleet(table: SessionTable, queue: str, workers: int, label_sets: int, resources: dict[str, int]) -> None:
    for i in range(workers):
        labels = {"zone": f"z{i % label_sets}", "gpu_model": ("h100", "a100")[(i % label_sets) % 2]} \
            if label_sets else {}
        table.connect_worker(0.0, WorkerRegistration(
            task_queue=queue, worker_id=f"{queue}-{i}", identity="probe", host_name="probe",
            capacity=ResourceVector({"sessions": 1000, **resources}), labels=labels))
    table.take_events()


def main(argv: list[str] | None = None) -> int:
    """Measure and print the result line."""
    parser = argparse.ArgumentParser(prog="bench.placement_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--label-sets", type=int, default=10)
    parser.add_argument("--ops", type=int, default=5000, help="create + complete pairs per block")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per shape (they alternate)")
    args = parser.parse_args(argv)
    table = SessionTable()
    _fleet(table, "plain", args.workers, 0, {})
    _fleet(table, "res", args.workers, args.label_sets, {"gpu": 8, "scratch_gb": 1000})
    options = SessionOptions()
    shapes = {
        "plain": ("plain", ResourceVector.one_session(), parse_selector("")),
        "res": ("res", ResourceVector({"sessions": 1, "gpu": 1, "scratch_gb": 100}), parse_selector(SELECTOR)),
    }
    per_pair: dict[str, list[float]] = {name: [] for name in shapes}
    gc.collect()
    gc.freeze()
    now = 1.0
    for block in range(args.blocks * 2):
        name = ("plain", "res")[block % 2] if block % 4 < 2 else ("res", "plain")[block % 2]
        queue, demand, selector = shapes[name]
        started = time.process_time()
        for _ in range(args.ops):
            now += 1e-6
            session = table.create(now, queue, options, demand=demand, selector=selector)
            assert isinstance(session, Session)
            table.complete(now, session.session_id)
            table.take_events()
        per_pair[name].append((time.process_time() - started) / args.ops * 1e6)
    emit("result", workers=args.workers, label_sets=args.label_sets, ops=args.ops, selector=SELECTOR,
         plain_us=[round(x, 2) for x in per_pair["plain"]], res_us=[round(x, 2) for x in per_pair["res"]],
         plain_median_us=round(statistics.median(per_pair["plain"]), 2),
         res_median_us=round(statistics.median(per_pair["res"]), 2),
         plain_min_us=round(min(per_pair["plain"]), 2), res_min_us=round(min(per_pair["res"]), 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
