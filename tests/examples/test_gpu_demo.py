"""``python -m examples.gpu`` (``make demo-gpu``): GPU sessions on workers with 2 and 1 GPU, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_demo_places_three_one_gpu_sessions_then_a_two_gpu_one_and_explains_the_impossible_one() -> None:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run([sys.executable, "-m", "examples.gpu"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "worker box-a: 2 gpu, labels zone=a" in out and "worker box-b: 1 gpu, labels zone=b" in out
    assert "box-a holds 2, box-b holds 1" in out
    assert "it waits: 1 request for gpu=2 (a worker can hold it once 2 GPUs are free)" in out
    assert "job-4: placed on box-a, the activity holds 2 gpu" in out
    assert "the server says: no connected worker matching the selector 'zone=b' has the capacity for gpu=2 " \
           "(largest: 1)" in out
    assert "CreationTimeoutError" in out
    assert out.rstrip().endswith("gpu demo OK")
    assert "Traceback" not in done.stderr
