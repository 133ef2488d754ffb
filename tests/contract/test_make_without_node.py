"""`make test` on a machine without Node.js stops at once with one line that says what to install
(when it cannot install it itself), and `make test-py` is the documented Python-only target."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path_without_node(tmp_path: Path) -> str:
    """A PATH with make, sh and id, and no node or npm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "id"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_make_test_without_node_fails_with_one_line_saying_what_to_install(path_without_node: str) -> None:
    env = {"PATH": path_without_node, "HOME": os.environ.get("HOME", "/tmp"), "SESSIOND_NO_APT": "1"}
    # The check is the first prerequisite of `test`: nothing else runs (or prints) before it.
    done = subprocess.run(["make", "--no-print-directory", "-s", "test"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)

    assert done.returncode != 0
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(lines) == 1, done.stderr
    assert "Node.js and npm" in lines[0] and "apt-get install nodejs npm" in lines[0]
    assert "make test-py" in lines[0]


def test_make_test_py_is_documented_and_skips_only_the_node_parts() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test_py = re.search(r"^test-py: (.*)\n\t(.*)$", makefile, flags=re.M)
    test = re.search(r"^test: (require-node .*)\n\t(.*)$", makefile, flags=re.M)
    assert test_py and test, "test and test-py targets"
    assert test.group(1).split() == ["require-node", "$(PY_CHECKS)", "lint-proto", "deps-browser", "deps-etcd"]
    assert test_py.group(1).split() == ["$(PY_CHECKS)", "deps-browser", "deps-etcd"]
    assert test_py.group(2).endswith('-m "not node" tests')
    assert "make test-py" in (ROOT / "README.md").read_text()
