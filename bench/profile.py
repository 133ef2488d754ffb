"""Profile sessiond (or a library worker) under ExecuteActivity load with py-spy; write a flame graph.

    python -m bench.profile --target server --out bench/flame-server-activity64.svg
    python -m bench.profile --target lib-worker --out bench/flame-libworker-activity64.svg

Starts ``python -m sessiond serve`` and one worker (the raw-stub one; with ``--target lib-worker``
the library ``SessionWorker`` with an async no-op activity), then runs ExecuteActivity at
``--in-flight`` (64) for ``--seconds`` while ``py-spy record`` samples the profiled process (py-spy
runs it as its child, so no ptrace permission on other processes is needed). ``--format
speedscope`` writes a speedscope JSON instead of an SVG. py-spy is a dev extra (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench.procs import PY, Proc, free_port, run_once, wait_port


def main(argv: list[str] | None = None) -> int:
    """Run the load with py-spy on the chosen process; print where the output went."""
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("server", "lib-worker", "raw-worker"), default="server")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("flamegraph", "speedscope", "raw"), default="flamegraph")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (py-spy --gil)")
    parser.add_argument("--loop", default="", help="event loop of the server and library worker (e.g. uvloop)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        parser.error("py-spy is not installed (it is a dev extra)")
    logs = Path(tempfile.mkdtemp(prefix="sessiond-profile-"))
    port = free_port()
    target = f"127.0.0.1:{port}"
    loop = ["--loop", args.loop] if args.loop else []
    record = [spy, "record", "--rate", str(args.rate), "--format", args.format, "--output", str(args.out.resolve()),
              "--nonblocking", *(["--gil"] if args.gil else []), "--"]
    server_argv = [PY, "-m", "sessiond", "serve", "--listen", target, "--log-level", "WARNING", *loop]
    server = Proc("server", (record if args.target == "server" else []) + server_argv, logs)
    procs = [server]
    try:
        wait_port(port, server, 60)
        if args.target != "lib-worker":
            worker_argv = [*(record if args.target == "raw-worker" else []), PY, "-m", "bench.worker", "--target",
                           target, "--kind", "sessiond", "--task-queue", "q", "--capacity", "1000",
                           "--separate-channels"]
        else:
            worker_argv = [*record, PY, "-m", "bench.lib_workers", "--target", target, "--task-queue", "q",
                           "--capacity", "1000", "--noop", "async", *loop]
        worker = Proc("worker", worker_argv, logs)
        procs.append(worker)
        worker.wait_event("ready", 60)
        result = run_once("loadgen", [PY, "-m", "bench.loadgen", "run", "--target", target, "--phases",
                             f"activity:{args.in_flight}", "--warmup", "1", "--duration", str(args.seconds),
                             "--task-queue", "q", "--payload", "binary"], logs, timeout=120 + args.seconds)
        phase = result["phases"][0]
        print(f"{phase['ops_per_s']} activities/s over {phase['seconds']} s (p50 {phase['p50_ms']} ms)",
              file=sys.stderr)
    finally:
        # SIGINT: py-spy stops its child and writes the profile.
        for proc in reversed(procs):
            proc.stop(timeout=30, sig=signal.SIGINT)
    print(f"wrote {args.out} (logs in {logs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
