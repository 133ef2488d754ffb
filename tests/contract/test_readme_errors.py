"""The README's error table is the code's one mapping table (SPEC §3), row for row."""

from __future__ import annotations

import re
from pathlib import Path

from sessiond.core import errors
from sessiond.server.errors import STATUS_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_rows() -> set[tuple[str, str]]:
    section = README.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \|", section, flags=re.M))


def _code_rows() -> set[tuple[str, str]]:
    rows = set()
    for error_type, code in STATUS_CODES.items():
        # An activity in flight is aborted for one of two reasons, both ABORTED.
        reasons = ("SESSION_FAILED", "SESSION_COMPLETED") if error_type is errors.ActivityAbortedError \
            else (error_type.reason,)
        rows.update((reason, code.name) for reason in reasons)
    return rows


def test_readme_error_table_matches_the_mapping_table() -> None:
    assert _readme_rows() == _code_rows()


def test_every_domain_error_is_mapped() -> None:
    domain = {cls for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.SessionError) and cls is not errors.SessionError}
    # IllegalTransitionError is a bug, not a user-facing error: it is INTERNAL on purpose.
    # ActivityHeartbeatTimeoutError never becomes a status: it is answered in-band
    # (ExecuteActivityResponse.heartbeat_timeout, with the latest heartbeat details).
    assert domain - set(STATUS_CODES) == {errors.IllegalTransitionError, errors.ActivityHeartbeatTimeoutError}
