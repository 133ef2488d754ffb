"""mypy pins the typed activity calls: typed_ok.py must type-check under --strict (with the inferred
types it asserts), and typed_bad.py must fail with exactly the errors its ``# E:`` comments name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _mypy(path: Path) -> tuple[int, list[str]]:
    out, err, code = api.run(["--strict", "--no-incremental", "--config-file", str(ROOT / "pyproject.toml"),
                              "--show-error-codes", "--hide-error-context", "--no-pretty", str(path)])
    assert not err, err
    return code, [line for line in out.splitlines() if ": error: " in line]


@pytest.mark.timeout(300)
def test_typed_calls_type_check_and_infer_the_result_types() -> None:
    code, errors = _mypy(HERE / "typed_ok.py")
    assert (code, errors) == (0, [])


@pytest.mark.timeout(300)
def test_wrong_arguments_and_wrong_result_uses_are_reported_line_by_line() -> None:
    source = (HERE / "typed_bad.py").read_text().splitlines()
    expected = {n: m.group(1) for n, line in enumerate(source, 1) if (m := re.search(r"# E: ([\w-]+)$", line))}
    assert len(expected) == 10

    code, errors = _mypy(HERE / "typed_bad.py")

    assert code == 1
    found: dict[int, set[str]] = {}
    for line in errors:
        match = re.match(r".*typed_bad\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        assert match, line
        found.setdefault(int(match.group(1)), set()).add(match.group(2))
    assert set(found) == set(expected), "\n".join(errors)
    for number, code_name in expected.items():
        assert code_name in found[number], f"line {number}: expected [{code_name}], got {found[number]}"
