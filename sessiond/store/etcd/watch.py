"""Watches, multiplexed on ONE Watch stream, that resume at an exact revision and report compaction.

Each :class:`Watch` remembers ``next_revision``: the revision after the last one it queued for its
reader. When the stream breaks (member killed, connection lost, member cut off from the leader), the
watcher opens a new stream on another member and re-creates every watch from its
``next_revision``, so the reader sees every revision once: no gap, no duplicate. When etcd no longer
has that revision (compacted), the watch ends with :class:`EtcdCompactedError` carrying etcd's
oldest revision: the reader re-reads and watches again; nothing is skipped silently.

A stream that goes quiet is probed: after ``probe_interval`` seconds without a response the
watcher asks for a progress report, and a member that does not answer within ``stall_timeout``
seconds is left (a frozen or partitioned member keeps its TCP connection open, so the stream would
otherwise hang with no error).

Memory is bounded per watch: at most ``max_pending`` batches wait for the reader. A watch whose
reader falls that far behind is cancelled on the server and re-created from its ``next_revision``
once the reader has caught up, so one slow reader neither grows memory nor stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.errors import (
    EtcdClosedError,
    EtcdCompactedError,
    EtcdError,
    EtcdUnavailableError,
    WatchCancelledError,
)
from sessiond.supervise import stop, supervise

if TYPE_CHECKING:
    from sessiond.store.etcd.client import EtcdClient, Member

__all__ = ["Watch", "WatchBatch", "Watcher"]

log = logging.getLogger("sessiond.store.etcd")

PROBE_INTERVAL = 2.0
STALL_TIMEOUT = 3.0
PUT = pb.Event.EVENT_TYPE_PUT
DELETE = pb.Event.EVENT_TYPE_DELETE


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of whole revisions, in order; ``revision`` is the last one's."""

    revision: int
    events: Sequence[pb.Event]


class Watch:
    """One watch on the shared stream. ``async for batch in watch`` yields :class:`WatchBatch` es.

    Iteration ends (StopAsyncIteration) after :meth:`cancel`; it raises :class:`EtcdCompactedError`
    when the revisions it needs are gone, :class:`WatchCancelledError` when etcd ended it for another
    reason, and :class:`EtcdClosedError` when the client closed.
    """

    def __init__(self, watcher: Watcher, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool,
                 max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be positive")
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv
        self.next_revision = start_revision  # 0 = "from now" until etcd confirms the watch
        self.server_id: int | None = None  # its id on the current stream, when created there
        self.lagging = False  # cancelled on the server because the reader fell behind
        self.ended = False
        self._watcher = watcher
        self._max_pending = max_pending
        self._pending: deque[WatchBatch] = deque()
        self._error: EtcdError | None = None
        self._changed = asyncio.Event()
        self._created = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            if self._pending:
                batch = self._pending.popleft()
                if self.lagging and not self._pending:
                    self._watcher._resume(self)  # caught up: re-create from next_revision
                return batch
            if self._error is not None:
                raise self._error
            if self.ended:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    async def cancel(self) -> None:
        """End the watch; iteration stops after the batches already queued."""
        self._watcher._cancel(self)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    # -- called by the watcher

    def _deliver(self, events: Sequence[pb.Event]) -> bool:
        """Queue a batch; False when the reader is too far behind (the batch is not taken)."""
        if len(self._pending) >= self._max_pending:
            return False
        self._pending.append(WatchBatch(events[-1].kv.mod_revision, events))
        self.next_revision = events[-1].kv.mod_revision + 1
        self._changed.set()
        return True

    def _fail(self, error: EtcdError) -> None:
        if self._error is None and not self.ended:
            self._error = error
        self.ended = True
        if not self._created.done():
            self._created.set_exception(error)
            self._created.exception()  # the creator may have gone; do not warn about it
        self._changed.set()


class Watcher:
    """All watches of one :class:`EtcdClient`, on one Watch stream."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._active: list[Watch] = []  # every watch not ended, in creation order
        self._by_id: dict[int, Watch] = {}  # server ids on the current stream
        self._ids = itertools.count(1)  # never reused, so a late response for an old id is ignored
        self._outbox: deque[pb.WatchRequest] = deque()
        self._outbox_ready = asyncio.Event()
        self._live = False  # a stream is open and accepts requests
        self._task: asyncio.Task[None] | None = None
        self.streams_opened = 0  # streams that answered at least once (1 while nothing broke)
        self.endpoint: str | None = None  # the member the current stream is open to
        self.probe_interval = PROBE_INTERVAL
        self.stall_timeout = STALL_TIMEOUT
        self._last_heard = 0.0

    async def watch(self, key: bytes, range_end: bytes, *, start_revision: int, prev_kv: bool, max_pending: int,
                    timeout: float) -> Watch:
        """Register a watch and wait until etcd confirms it (see :meth:`EtcdClient.watch`)."""
        watch = Watch(self, key, range_end, start_revision, prev_kv, max_pending)
        self._active.append(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="etcd-watch")
            self._task.add_done_callback(self._task_ended)
            supervise(self._task, stopping=self._client.stream_end_expected, fail=self._client.stream_failed, log=log)
        if self._live:
            self._create(watch)
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives in the loop step in
        # which the confirmation does, and the canceller (a store closing) then waits for ever on a
        # task that went on to read the watch. asyncio.wait lets the cancel through.
        try:
            await asyncio.wait({watch._created}, timeout=timeout)
        except BaseException:
            self._cancel(watch)
            raise
        if not watch._created.done():
            self._cancel(watch)
            raise EtcdUnavailableError(f"etcd: watch not confirmed within {timeout} s")
        watch._created.result()  # raises what ended the watch before it was confirmed
        return watch

    async def close(self) -> None:
        """Stop the stream; every open watch ends with :class:`EtcdClosedError`."""
        await stop(self._task)
        for watch in self._active:
            watch._fail(EtcdClosedError("etcd client closed"))
        self._active.clear()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The stream's task ends only when the client closes; if it died before (a bug, reported by
        :func:`~sessiond.supervise.supervise`), every open watch ends with an error instead of
        waiting for ever (a later :meth:`watch` starts the stream again)."""
        if self._client.closed:
            return
        self._stream_ended()
        for watch in list(self._active):
            watch._fail(EtcdUnavailableError(f"etcd watch stream failed ({task.get_name()} ended)"))
        self._active.clear()

    # -- requests

    def _send(self, request: pb.WatchRequest) -> None:
        self._outbox.append(request)
        self._outbox_ready.set()

    def _create(self, watch: Watch) -> None:
        watch.server_id = next(self._ids)
        self._by_id[watch.server_id] = watch
        self._send(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=watch.key, range_end=watch.range_end, start_revision=watch.next_revision, prev_kv=watch.prev_kv,
            progress_notify=True, watch_id=watch.server_id)))

    def _drop_server_watch(self, watch: Watch) -> None:
        if watch.server_id is not None:
            self._by_id.pop(watch.server_id, None)
            if self._live:
                self._send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch.server_id)))
            watch.server_id = None

    def _cancel(self, watch: Watch) -> None:
        self._drop_server_watch(watch)
        watch.ended = True
        watch._changed.set()
        with contextlib.suppress(ValueError):
            self._active.remove(watch)

    def _resume(self, watch: Watch) -> None:
        watch.lagging = False
        if self._live and not watch.ended:
            self._create(watch)

    # -- the stream

    async def _run(self) -> None:
        await self._client.keep_stream("watch", self._stream, lambda: self.streams_opened, self._stream_ended)

    def _stream_ended(self) -> None:
        self._live = False
        self.endpoint = None
        self._by_id.clear()
        self._outbox.clear()
        for watch in self._active:
            watch.server_id = None

    async def _stream(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        call = member.watch.Watch(None, metadata=self._client.metadata)
        self.endpoint = member.endpoint
        self._last_heard = loop.time()
        probed_at: float | None = None
        # Re-create every watch from where it stopped, in one synchronous step: a watch() call that
        # arrives later sees _live and creates its own.
        self._live = True
        for watch in self._active:
            if not watch.lagging and not watch.ended:
                self._create(watch)
        reader = asyncio.create_task(self._read(call), name="etcd-watch-read")
        try:
            while True:
                while self._outbox:
                    await call.write(self._outbox.popleft())
                now = loop.time()
                if probed_at is not None and self._last_heard >= probed_at:
                    probed_at = None  # the member answered
                # Only a stream that carries watches is probed (etcd may leave a progress request on
                # an empty stream unanswered).
                if probed_at is None and self._by_id and now - self._last_heard >= self.probe_interval:
                    probed_at = now
                    await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                if probed_at is not None and now - probed_at >= self.stall_timeout:
                    raise EtcdUnavailableError(f"etcd watch stream to {member.endpoint}: no answer for "
                                               f"{now - self._last_heard:.1f} s")
                if probed_at is not None:
                    wake_at = probed_at + self.stall_timeout
                else:
                    wake_at = (self._last_heard if self._by_id else now) + self.probe_interval
                self._outbox_ready.clear()
                waiter = asyncio.ensure_future(self._outbox_ready.wait())
                try:
                    await asyncio.wait({waiter, reader}, timeout=max(wake_at - loop.time(), 0.001),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if reader.done():
                    reader.result()
                    raise EtcdUnavailableError("etcd watch stream ended")
        finally:
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse]) -> None:
        counted = False
        while True:
            reply = await call.read()
            if not isinstance(reply, pb.WatchResponse):
                return  # EOF: the member ended the stream
            self._last_heard = asyncio.get_running_loop().time()
            if not counted:
                counted = True
                self.streams_opened += 1
            self._dispatch(reply)

    def _dispatch(self, reply: pb.WatchResponse) -> None:
        watch = self._by_id.get(reply.watch_id)
        if watch is None:
            return  # cancelled by us, or superseded: its late responses are ignored
        if reply.created:
            if watch.next_revision == 0:
                watch.next_revision = reply.header.revision + 1
            if not watch._created.done() and not reply.canceled:
                watch._created.set_result(None)
        if reply.canceled:
            self._by_id.pop(reply.watch_id, None)
            watch.server_id = None
            with contextlib.suppress(ValueError):
                self._active.remove(watch)
            if reply.compact_revision:
                watch._fail(EtcdCompactedError(
                    f"etcd: watch of {watch.key!r} needs revision {watch.next_revision}, compacted up to "
                    f"{reply.compact_revision}", compact_revision=reply.compact_revision))
            else:
                watch._fail(WatchCancelledError(f"etcd cancelled the watch of {watch.key!r}: "
                                                f"{reply.cancel_reason or 'no reason given'}"))
            return
        if reply.events:
            # A resumed watch starts exactly at next_revision; the filter only guards against a
            # server that would send a revision twice.
            events = [e for e in reply.events if e.kv.mod_revision >= watch.next_revision]
            if events and not watch._deliver(events):
                watch.lagging = True
                self._drop_server_watch(watch)
                log.warning("etcd watch of %r: reader is %d batches behind; paused until it catches up",
                            watch.key, len(watch._pending))
        elif not reply.created and reply.header.revision >= watch.next_revision:
            # A progress notification: no event of this watch up to header.revision.
            watch.next_revision = reply.header.revision + 1
