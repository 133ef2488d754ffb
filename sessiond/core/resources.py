"""A resource vector: named non-negative amounts.

A worker declares its capacity per resource (``{"sessions": 4, "gpu": 2}``; ``sessions`` is its
``max_concurrent_sessions``) and every session demands one ``sessions`` plus what it asks for
(``{"gpu": 1}``). Names follow :func:`sessiond.core.selector.name_problem`.
"""

from __future__ import annotations

from collections.abc import ItemsView, Mapping

SESSIONS = "sessions"


class ResourceVector:
    """Immutable mapping of resource name to amount; missing names are 0."""

    __slots__ = ("_amounts", "_hash")

    def __init__(self, amounts: Mapping[str, int] | None = None) -> None:
        self._amounts: dict[str, int] = {k: v for k, v in (amounts or {}).items() if v}
        self._hash: int | None = None

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

    @classmethod
    def _of(cls, amounts: dict[str, int]) -> ResourceVector:
        # Hot path (every placement and release): ``amounts`` is fresh and has no zero amounts.
        vector = cls.__new__(cls)
        vector._amounts = amounts
        vector._hash = None
        return vector

    def __add__(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, 1)

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, -1)

    def _combine(self, other: ResourceVector, sign: int) -> ResourceVector:
        out = dict(self._amounts)
        for k, v in other._amounts.items():
            amount = out.get(k, 0) + sign * v
            if amount:
                out[k] = amount
            else:
                out.pop(k, None)
        return ResourceVector._of(out)

    def items(self) -> ItemsView[str, int]:
        """The non-zero amounts (a read-only view)."""
        return self._amounts.items()

    def __len__(self) -> int:
        return len(self._amounts)

    def as_dict(self) -> dict[str, int]:
        """The non-zero amounts by resource name (a copy)."""
        return dict(self._amounts)

    def covers(self, demand: ResourceVector) -> bool:
        """True when every amount in ``demand`` fits within this vector."""
        return all(self[k] >= v for k, v in demand._amounts.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceVector) and self._amounts == other._amounts

    def __hash__(self) -> int:
        # Cached: vectors key dicts on hot paths (kinds of waiters, converted maps); they never change.
        if self._hash is None:
            self._hash = hash(frozenset(self._amounts.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"ResourceVector({self._amounts!r})"

    def __str__(self) -> str:
        """``gpu=1,sessions=1``: names sorted (messages and logs)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self._amounts.items())) or "nothing"


_ONE_SESSION = ResourceVector({SESSIONS: 1})
