"""The README's main command (`make demo` = `python -m examples.fileprocessing`) works end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_all_four_scenarios_and_exits_zero() -> None:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "examples.fileprocessing"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # Scenario 1: the three steps, each on the same worker.
    assert "all three steps on one worker: True" in out
    for step in ("download  ran on", "process   ran on", "upload    ran on"):
        assert step in out
    # Scenario 2: the kill surfaces as SessionFailedError with its cause.
    assert "SessionFailedError after" in out and "cause=WORKER_LOST" in out
    # Scenario 3: recreate lands on the same worker.
    assert "run 2 landed on run 1's worker and found its file: True" in out
    # Scenario 4: the restarted worker process got its session back and continued from its disk.
    assert "its files are here, continuing" in out
    assert "one session, two worker processes, the file found on disk: True" in out
    assert out.rstrip().endswith("demo OK")
