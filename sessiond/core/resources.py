"""A resource vector: named non-negative amounts, so per-resource limits need no rewrite.

Today every worker declares one resource, ``sessions`` (its ``max_concurrent_sessions``), and
every session demands one of it. SPEC §6 adds more names (``gpu``, ``scratch_gb``).
"""

from __future__ import annotations

from collections.abc import Mapping

SESSIONS = "sessions"


class ResourceVector:
    """Immutable mapping of resource name to amount; missing names are 0."""

    __slots__ = ("_amounts",)

    def __init__(self, amounts: Mapping[str, int] | None = None) -> None:
        self._amounts: dict[str, int] = {k: v for k, v in (amounts or {}).items() if v}

    @classmethod
    def one_session(cls) -> ResourceVector:
        """The demand of one session."""
        return _ONE_SESSION

    @classmethod
    def sessions(cls, n: int) -> ResourceVector:
        """A capacity of ``n`` sessions."""
        return cls({SESSIONS: n})

    def __getitem__(self, name: str) -> int:
        return self._amounts.get(name, 0)

    def __add__(self, other: ResourceVector) -> ResourceVector:
        out = dict(self._amounts)
        for k, v in other._amounts.items():
            out[k] = out.get(k, 0) + v
        return ResourceVector(out)

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        out = dict(self._amounts)
        for k, v in other._amounts.items():
            out[k] = out.get(k, 0) - v
        return ResourceVector(out)

    def as_dict(self) -> dict[str, int]:
        """The non-zero amounts by resource name (a copy)."""
        return dict(self._amounts)

    def covers(self, demand: ResourceVector) -> bool:
        """True when every amount in ``demand`` fits within this vector."""
        return all(self[k] >= v for k, v in demand._amounts.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceVector) and self._amounts == other._amounts

    def __hash__(self) -> int:
        return hash(frozenset(self._amounts.items()))

    def __repr__(self) -> str:
        return f"ResourceVector({self._amounts!r})"


_ONE_SESSION = ResourceVector({SESSIONS: 1})
