"""The store boundary: what the server asks of wherever sessions are made durable.

A sketch for the replicated server (distributed.md §3.9 item 2), to be shaped by the core's
reserve -> commit -> publish path: the pure core still decides (it reserves a slot synchronously),
the store makes the decision durable (commit), and only then does anyone hear of it (publish).
:class:`~sessiond.store.memory.MemoryStore` commits synchronously and holds nothing, so the
single-process default pays nothing; the etcd store commits fenced Txns (§3.2).

Records cross the boundary as opaque bytes (a serialized ``sessiond.v1.Session``, as distributed.md
§3.1 stores them), so the store never depends on the core's types. Keys built from several names
are tuples (a worker is ``(task_queue, worker_id)``), never concatenations.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "ClaimWorker",
    "CommitResult",
    "EndSession",
    "Outcome",
    "PlaceSession",
    "ReleaseWorker",
    "SessionStore",
    "StoreOp",
    "StoredSession",
    "WorkerKey",
    "WorkerSnapshot",
]

WorkerKey = tuple[str, str]
"""(task_queue, worker_id)."""


@dataclass(frozen=True, slots=True)
class ClaimWorker:
    """This replica owns ``worker`` from now on: its registration, or a takeover from a dead or
    departed replica. Applied only if nobody changed the worker's key since ``seen_revision``
    (0 = the worker is new to the cluster); the committed revision becomes this replica's fence."""

    worker: WorkerKey
    record: bytes
    seen_revision: int


@dataclass(frozen=True, slots=True)
class PlaceSession:
    """A session the core reserved on ``worker``: durable only if this replica still owns the worker,
    ``owner`` has no other open session and ``request_id`` was not used (each within its scope)."""

    session_id: str
    worker: WorkerKey
    record: bytes
    owner: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndSession:
    """A session became FAILED or CLOSED: store its terminal record, free its slot and its owner key,
    and keep its request key only as long as the record is retained."""

    session_id: str
    worker: WorkerKey
    record: bytes
    owner: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseWorker:
    """The worker is gone from this replica for good (its stream ended, none of its sessions waits
    to reattach): delete its ownership keys, if this replica still owns it, so that nobody routes
    creates to it. A later registration claims it afresh."""

    worker: WorkerKey


StoreOp = ClaimWorker | PlaceSession | EndSession | ReleaseWorker


class Outcome(enum.Enum):
    """What became of one operation of a commit."""

    COMMITTED = "committed"
    """Durable; the caller may publish it."""
    FENCE_LOST = "fence_lost"
    """Another replica owns the worker now: drop the worker locally, fail nothing, write nothing more."""
    OWNER_TAKEN = "owner_taken"
    """The owner key has an open session elsewhere (``existing_session_id``): EXISTING_OPEN_SESSION."""
    REQUEST_DONE = "request_done"
    """The request id already placed ``existing_session_id`` (a retry that reached another replica)."""
    UNKNOWN = "unknown"
    """The store's answer was lost; the operation may or may not be durable. Read it back before
    publishing or undoing anything."""


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The outcome of one operation, and the store revision that made it durable (0 for memory)."""

    outcome: Outcome
    revision: int = 0
    existing_session_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session record as stored, with the revision of its last change."""

    session_id: str
    worker: WorkerKey
    record: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker's ownership fence and the sessions recorded on it, read at one revision."""

    worker: WorkerKey
    fence_revision: int
    sessions: tuple[StoredSession, ...]


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions are made durable. One instance per server process."""

    @property
    def commits_synchronously(self) -> bool:
        """True when :meth:`commit_now` may be used: the commit needs no I/O (memory). The engine then
        stays on today's path, with no await between the core's decision and its publication."""
        ...

    def commit_now(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Commit without awaiting (only when :attr:`commits_synchronously`); one result per operation."""
        ...

    async def commit(self, batch: Sequence[StoreOp]) -> list[CommitResult]:
        """Commit a batch (group commit: operations of many callers in as few round trips as possible).

        Operations about one worker keep their order. One result per operation, in order.
        """
        ...

    async def load_worker_sessions(self, worker: WorkerKey) -> WorkerSnapshot:
        """The worker's fence and its recorded open sessions: what a new owner adopts after a takeover."""
        ...

    async def read_session(self, session_id: str) -> StoredSession | None:
        """A session owned anywhere (linearizable), or None when the store has no record of it."""
        ...

    def watch_session(self, session_id: str, after_revision: int) -> AsyncIterator[StoredSession]:
        """Every change of a session's record after ``after_revision``, in order, none skipped; the
        caller stops iterating after a terminal state."""
        ...

    def owner_of(self, worker: WorkerKey) -> str | None:
        """Which replica owns ``worker``, from the local mirror (no I/O); None = no other replica knows it."""
        ...

    def replica_address(self, replica_id: str) -> str | None:
        """A live replica's advertised address, from the local mirror (no I/O)."""
        ...

    async def start(self) -> None:
        """Connect, register this replica and fill the mirrors."""
        ...

    async def close(self) -> None:
        """Deregister this replica and release the connection."""
        ...
