"""`make demo-cluster` (`python -m examples.replicas`) works end to end: the replica owning a running
session's worker is killed with kill -9 and the session goes on, same id, through another replica."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_cluster_survives_the_death_of_the_owner_replica(etcd_binary: str) -> None:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run([sys.executable, "-m", "examples.replicas"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "kill -9 of replica" in out
    assert "step 3 -> step 3 done" in out
    assert "same id, survived its replica" in out
    assert out.rstrip().endswith("demo OK")
