"""Worker-side fencing (SPEC §6.1): stop a session's activities when the server has gone quiet.

The server answers every ``Heartbeat`` (``HeartbeatAck``), and every message it sends confirms
the sessions the worker holds: the stream is ordered, so a session the server has failed is
dropped (``SessionEnded``) before any later message arrives. A worker that has heard nothing for a
session's ``heartbeat_timeout`` must assume the server has failed it (a partition, or the server is
gone) and its caller may already run the work elsewhere: it *fences* the session, stopping its
running activities and refusing its tasks, until a server confirms the session again. Fencing
stops activities, not the session: whether the session itself is kept is the server's word.

Pure bookkeeping with time as an argument; :class:`~sessiond_client.SessionWorker` drives it.
"""

from __future__ import annotations

from collections.abc import Mapping

from sessiond_client._types import SessionInfo

SERVER_UNREACHABLE = "SERVER_UNREACHABLE"
"""The cancellation reason an activity sees when its session is fenced."""

SERVER_UNREACHABLE_FAILURE = "ServerUnreachable"
"""The failure type reported for a fenced activity (delivered if the server ever reads it)."""

SESSION_FENCED = "SessionFenced"
"""The failure type of a task refused because its session is fenced."""

# A session whose options do not say (they always do, from a server that fills in defaults).
_DEFAULT_HEARTBEAT_TIMEOUT = 20.0


def heartbeat_timeout(session: SessionInfo) -> float:
    """The session's heartbeat_timeout in seconds."""
    timeout = session.options.heartbeat_timeout
    return _DEFAULT_HEARTBEAT_TIMEOUT if timeout is None else timeout.total_seconds()


class Fence:
    """When the worker last heard from the server, and which held sessions are fenced."""

    __slots__ = ("_fenced", "last_heard")

    def __init__(self, now: float) -> None:
        self.last_heard = now
        self._fenced: set[str] = set()

    def heard(self, now: float) -> set[str]:
        """The server spoke: every held session is confirmed. Returns the ones that were fenced."""
        self.last_heard = now
        confirmed, self._fenced = self._fenced, set()
        return confirmed

    def is_fenced(self, session_id: str) -> bool:
        """True while the session's activities must not run."""
        return session_id in self._fenced

    def forget(self, session_id: str) -> None:
        """The session was dropped."""
        self._fenced.discard(session_id)

    def due(self, now: float, sessions: Mapping[str, SessionInfo]) -> list[str]:
        """Fence every held session whose heartbeat_timeout of silence has passed at ``now``
        (exactly at it counts); return the newly fenced ones."""
        silent = now - self.last_heard
        newly = [sid for sid, info in sessions.items()
                 if sid not in self._fenced and silent >= heartbeat_timeout(info)]
        self._fenced.update(newly)
        return newly

    def next_due(self, sessions: Mapping[str, SessionInfo]) -> float | None:
        """When the next held session would be fenced if the server stays silent, or None."""
        timeouts = [heartbeat_timeout(info) for sid, info in sessions.items() if sid not in self._fenced]
        return self.last_heard + min(timeouts) if timeouts else None
