"""Which principal a worker_id belongs to: the first that registered it.

A worker_id (of a task queue) stays bound to its principal while a worker stream or detached
sessions hold it, and for a grace period after the last one went away, so a process restarting
finds its id still its own and another principal cannot step in meanwhile. After the grace the
binding is forgotten (worker ids are often one UUID per process: keeping them all would grow
without end); an id taken over later gains nothing, since recreate tokens and session records also
name the worker's principal.

Pure and O(1) amortized: released bindings expire in release order (the grace is one constant and
time only moves forward), so expiry pops from the front of an insertion-ordered dict.
"""

from __future__ import annotations

from sessiond.core.errors import PermissionDeniedError
from sessiond.core.model import WorkerKey


class WorkerBindings:
    """worker key → principal, with a grace period after release."""

    __slots__ = ("_bound", "_released", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._bound: dict[WorkerKey, str] = {}
        # Released bindings, oldest release first: key -> when the binding lapses.
        self._released: dict[WorkerKey, float] = {}

    def check(self, now: float, key: WorkerKey, principal: str) -> None:
        """Raise :class:`PermissionDeniedError` when ``key`` is bound to another principal."""
        self._expire(now)
        holder = self._bound.get(key)
        if holder is not None and holder != principal:
            raise PermissionDeniedError(
                f"worker_id {key.worker_id!r} of task queue {key.task_queue!r} is registered by another principal",
                metadata={"worker_id": key.worker_id, "task_queue": key.task_queue})

    def bind(self, key: WorkerKey, principal: str) -> None:
        """Bind ``key`` to ``principal`` (after :meth:`check`); a worker holds it from now on."""
        self._bound[key] = principal
        self._released.pop(key, None)

    def release(self, now: float, key: WorkerKey) -> None:
        """Nothing holds ``key`` any more: the binding lapses after the grace period."""
        if key in self._bound:
            self._released.pop(key, None)
            self._released[key] = now + self.grace
        self._expire(now)

    def principal_of(self, key: WorkerKey) -> str | None:
        """The principal ``key`` is bound to, if any (lapsed bindings may linger until the next call)."""
        return self._bound.get(key)

    def __len__(self) -> int:
        return len(self._bound)

    def _expire(self, now: float) -> None:
        released = self._released
        while released:
            key, until = next(iter(released.items()))
            if until > now:
                return
            del released[key]
            del self._bound[key]
