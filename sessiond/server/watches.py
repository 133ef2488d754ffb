"""WatchSession fan-out: the open watches of each session, and what each one sends next.

A watch holds at most one snapshot not yet sent: changes coalesce, so a slow reader never makes
the server queue states for it (the bound is one message per watch), and the terminal state is
never coalesced away (it is the last one). A watch that goes away, however it ends, leaves no
state behind. The engine decides when a session changed (:meth:`Watches.notify`); this module only
delivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from sessiond_client.api.v1 import session_pb2

from sessiond.core.errors import SessionError
from sessiond.core.model import Session, SessionState


@dataclass(eq=False)
class _Watcher:
    """One WatchSession stream: the latest snapshot not yet sent (changes coalesce), or why to stop."""

    latest: session_pb2.Session | None = None
    error: SessionError | None = None
    wake: asyncio.Future[None] | None = None

    def push(self, snapshot: session_pb2.Session | None = None, error: SessionError | None = None) -> None:
        if snapshot is not None:
            self.latest = snapshot
        if error is not None:
            self.error = error
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class Watches:
    """The open watches by session id."""

    def __init__(self, to_pb: Callable[[Session], session_pb2.Session]) -> None:
        """Args:
            to_pb: the snapshot a watcher is sent of a session.
        """
        self._to_pb = to_pb
        # Watchers by session, in a dict (insertion-ordered) so one leaves in O(1).
        self._by_session: dict[str, dict[_Watcher, None]] = {}

    def __len__(self) -> int:
        """Sessions with at least one open watch."""
        return len(self._by_session)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    async def stream(self, session: Session) -> AsyncGenerator[session_pb2.Session, None]:
        """The session now, then each change :meth:`notify` reports, ending after its terminal state
        (or raising the error :meth:`end_all` gave)."""
        current = self._to_pb(session)
        if session.state is not SessionState.OPEN:
            yield current
            return
        # Register before the first yield: sending it awaits, and a change meanwhile must still
        # reach this watcher (else the stream could end without its terminal state).
        session_id = session.session_id
        watcher = _Watcher()
        self._by_session.setdefault(session_id, {})[watcher] = None
        try:
            yield current
            while True:
                if watcher.latest is None and watcher.error is None:
                    watcher.wake = asyncio.get_running_loop().create_future()
                    await watcher.wake
                if watcher.error is not None:
                    raise watcher.error
                snapshot, watcher.latest = watcher.latest, None
                assert snapshot is not None
                yield snapshot
                if snapshot.state != session_pb2.SESSION_STATE_OPEN:
                    return
        finally:
            # Always (a cancelled watch included): a watch that goes away leaves no state.
            watchers = self._by_session.get(session_id)
            if watchers is not None:
                watchers.pop(watcher, None)
                if not watchers:
                    del self._by_session[session_id]

    def notify(self, session: Session) -> None:
        """Send the session's new state to its watchers (the last one for a terminal state)."""
        watchers = self._by_session.get(session.session_id) if session.state is SessionState.OPEN \
            else self._by_session.pop(session.session_id, None)
        if watchers:
            # The full snapshot only when someone watches (most sessions end unwatched).
            snapshot = self._to_pb(session)
            for watcher in watchers:
                watcher.push(snapshot)

    def end(self, session_id: str, error: SessionError) -> None:
        """The session's open watches end now with ``error`` (its worker moved to another replica)."""
        for watcher in self._by_session.pop(session_id, {}):
            watcher.push(error=error)

    def end_all(self, error: SessionError) -> None:
        """Every open watch ends now with ``error`` (a shutdown: callers resubscribe elsewhere)."""
        for watchers in self._by_session.values():
            for watcher in watchers:
                watcher.push(error=error)
