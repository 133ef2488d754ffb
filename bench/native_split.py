"""Where a server's CPU per activity goes, by native library: sessiond vs. the protocol floor.

    python -m bench.native_split [--rate 300 | --rate 0] [--seconds 8] [--runs 2]

For each repetition (alternating which goes first) it runs the floor (``bench/echo_server.py``
Relay with one echo worker) and sessiond (``python -m sessiond serve`` with one raw-stub worker) at
``--rate`` activities/s offered over 64 lanes (``--rate 0``: 64 in flight, as fast as it goes),
and samples the server with Linux ``perf`` (software ``cpu-clock`` event, no hardware counters
needed) over the measured window. Each shared object's share of
the samples times the server's CPU per activity (``/proc``, as every bench figure) gives µs per
activity spent in the interpreter (libpython), grpc's Cython and C core (cygrpc), the kernel,
protobuf's C extension (_message), libc and the rest. Prints a table and one JSON line.

This is how ``bench/notes.md`` (issue 15, "where the remaining distance is") splits the gap: grpc and
the kernel cost sessiond what they cost the floor; the difference is Python. ``perf`` comes from the
distribution (Debian: ``apt-get install linux-perf``); it is an analysis tool, not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import PY, Proc, free_port, run_once, wait_port

_GROUPS = (("libpython", "libpython"), ("cygrpc", "cygrpc"), ("kernel", "[kernel"), ("protobuf", "_message"),
           ("libc", "libc.so"))


def _split(perf_data: Path) -> dict[str, float]:
    """Share (0..1) of the samples in each group of shared objects."""
    out = subprocess.run(["perf", "report", "-i", str(perf_data), "--no-children", "--sort", "dso", "-g", "none",
                          "-q", "-n", "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        samples, dso = int(parts[1]), " ".join(parts[2:])
        group = next((name for name, needle in _GROUPS if needle in dso), "other")
        counts[group] = counts.get(group, 0) + samples
    total = sum(counts.values()) or 1
    return {name: counts.get(name, 0) / total for name, _ in (*_GROUPS, ("other", ""))}


def _one(kind: str, rate: int, seconds: float, logs: Path) -> dict[str, Any]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    if kind == "floor":
        server = Proc("echo-server", [PY, "-m", "bench.echo_server", "--port", str(port)], logs)
        server.wait_event("ready", 30)
        worker_argv = ["--kind", "echo-worker"]
        phase = "relay:64" + (f"@{rate}" if rate else "")
    else:
        server = Proc("sessiond", [PY, "-m", "sessiond", "serve", "--listen", target, "--log-level", "WARNING"], logs)
        wait_port(port, server, 30)
        worker_argv = ["--kind", "sessiond", "--task-queue", "q", "--capacity", "1000"]
        phase = "activity:64" + (f"@{rate}" if rate else "")
    worker = Proc(f"{kind}-worker", [PY, "-m", "bench.worker", "--target", target, "--streams", "1",
                                     "--separate-channels", *worker_argv], logs)
    try:
        worker.wait_event("ready", 60)
        data = logs / f"{kind}-{time.monotonic_ns()}.perf"
        warmup = 1.0
        # perf samples the measured window only: it starts when the load generator's warm-up ends.
        perf = subprocess.Popen(["sh", "-c", f"sleep {warmup + 0.5}; exec perf record -q -e cpu-clock -F 2000 "
                                 f"-p {server.pid} -o {data} -- sleep {seconds - 1.0}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_once(f"loadgen-{kind}", [PY, "-m", "bench.loadgen", "run", "--target", target, "--phases", phase,
                                              "--warmup", str(warmup), "--duration", str(seconds), "--task-queue", "q",
                                              "--payload", "binary", "--server-pid", str(server.pid)],
                          logs, timeout=120 + seconds)
        if perf.wait(timeout=60) != 0:
            raise RuntimeError(f"perf record failed (exit {perf.returncode}); is perf_event_paranoid <= 2?")
        measured = result["phases"][0]
        us = measured["cpu_cores"]["server"] / measured["ops_per_s"] * 1e6
        return {"server_us_per_activity": round(us, 1),
                "us": {name: round(share * us, 1) for name, share in _split(data).items()}}
    finally:
        worker.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the per-library table and one JSON line."""
    parser = argparse.ArgumentParser(prog="bench.native_split", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=300,
                        help="activities/s offered (an open schedule, 64 lanes); 0: 64 in flight, closed loop")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        print("bench.native_split needs Linux perf (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="sessiond-native-split-"))
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "sessiond": []}
    for r in range(args.runs):
        for kind in (("floor", "sessiond") if r % 2 == 0 else ("sessiond", "floor")):
            runs[kind].append(_one(kind, args.rate, args.seconds, logs))
    names = ["server_us_per_activity", *(name for name, _ in _GROUPS), "other"]

    def median(kind: str, name: str) -> float:
        values = [run["server_us_per_activity"] if name == "server_us_per_activity" else run["us"][name]
                  for run in runs[kind]]
        return round(float(statistics.median(values)), 1)

    where = f"{args.rate}/s offered" if args.rate else "64 in flight"
    print(f"server CPU per activity at {where}, µs (median of {args.runs}; logs in {logs})")
    print(f"{'':24s}{'floor':>10s}{'sessiond':>10s}{'diff':>10s}")
    table = {}
    for name in names:
        floor, sessiond = median("floor", name), median("sessiond", name)
        table[name] = {"floor": floor, "sessiond": sessiond}
        print(f"{name:24s}{floor:10.1f}{sessiond:10.1f}{sessiond - floor:+10.1f}")
    print(json.dumps({"event": "result", "rate": args.rate, "runs": args.runs, "median_us": table, "all": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
