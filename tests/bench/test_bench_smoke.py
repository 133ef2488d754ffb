"""The benchmark's smoke mode runs end to end, so the scripts never rot.

It asserts only that ``python -m bench --smoke`` completes and writes well-formed JSON with every
scenario present; it says nothing about speed (the full run, ``make bench``, is not a test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.runner import RESULT_KEYS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_smoke_writes_every_scenario(tmp_path: Path) -> None:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280, check=False,
    )
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"bench --smoke failed ({done.returncode}):\n{output}"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["mode"] == "smoke"
    assert results["meta"]["failed"] == []
    for key in RESULT_KEYS:
        scenario = results["scenarios"].get(key)
        assert scenario is not None, f"scenario {key} missing"
        assert scenario["cases"], f"scenario {key} has no rows"
        for row in scenario["cases"]:
            assert {"case", "value", "baseline", "ratio", "goal", "met"} <= row.keys(), row
            assert row["value"]["median"] is not None, f"{key}: {row['case']} has no figure"
    assert (tmp_path / "RESULTS.md").read_text().startswith("# sessiond benchmark results")
