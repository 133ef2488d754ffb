"""The in-memory store: the single-process default, where the core's own table is the only truth.

Committing is immediate and free, and there is nothing to read back: every session lives in this
process's table, so the engine never needs the store's reads. Nothing here imports grpc or etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from sessiond.store.base import CommitResult, Outcome, StoredSession, StoreOp, WorkerKey, WorkerSnapshot

if TYPE_CHECKING:
    from sessiond.store.base import SessionStore

__all__ = ["MemoryStore"]

_COMMITTED = CommitResult(Outcome.COMMITTED)


class MemoryStore:
    """A :class:`~sessiond.store.base.SessionStore` that commits synchronously and stores nothing."""

    @property
    def commits_synchronously(self) -> bool:
        """Always True."""
        return True

    def commit_now(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Every operation is committed: one process owns every worker, and the core already enforced
        the owner and request-id rules."""
        return [_COMMITTED] * len(batch)

    async def commit(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """The same as :meth:`commit_now`."""
        return self.commit_now(batch)

    async def load_worker_sessions(self, worker: WorkerKey) -> WorkerSnapshot:
        """Nothing is recorded outside the table (after a restart, sessions come back from the
        workers' own reports, SPEC §6.2)."""
        return WorkerSnapshot(worker, 0, ())

    async def read_session(self, session_id: str) -> StoredSession | None:
        """None: a session not in this process's table does not exist."""
        return None

    async def watch_session(self, session_id: str, after_revision: int) -> AsyncIterator[StoredSession]:
        """No changes ever come from elsewhere."""
        return
        yield  # an async generator that ends at once

    def owner_of(self, worker: WorkerKey) -> str | None:
        """None: there is no other replica."""
        return None

    def replica_address(self, replica_id: str) -> str | None:
        """None: there is no other replica."""
        return None

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""


if TYPE_CHECKING:
    _conforms: SessionStore = MemoryStore()  # mypy checks MemoryStore against the protocol
