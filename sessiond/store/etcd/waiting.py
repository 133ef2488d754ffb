"""The cluster's waiting creates and free-slot hints in etcd (SPEC §6.5, distributed.md §3.4).

Keys, under the cluster's prefix, all on the writing replica's lease (a dead replica's vanish):

============================== ============================================================
``fifo/t/<q>/<rid>/<ticket>``  a create waiting at replica ``rid`` for task queue ``q``; its
                               *create revision* is its place in the cluster-wide queue
``fifo/c/<q>/<rid>``           how many more sessions of ``q`` replica ``rid``'s workers take
                               now (an ASCII integer; absent = none)
============================== ============================================================

Every replica mirrors both (one watch on ``fifo/``), so "who is oldest" and "who has room" are
local reads. The mirror lags the store by one watch delivery; :class:`WaitingBoard` says nothing
stronger than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from sessiond.store.etcd.errors import EtcdCompactedError, EtcdError
from sessiond.store.etcd.ops import prefix_end
from sessiond.store.etcd.watch import PUT
from sessiond.supervise import stop

if TYPE_CHECKING:
    from sessiond.store.etcd.api import v3_subset_pb2 as pb
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Ticket", "WaitingBoard"]

log = logging.getLogger("sessiond.store.etcd")

Ticket = tuple[int, str, str]
"""A waiting create: (create revision, replica id, ticket id) — ordered oldest first."""


def _part(name: str) -> str:
    return quote(name, safe="")


class WaitingBoard:
    """This replica's view of the cluster's waiting creates and free slots, and its writes of its own."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.prefix = store.prefix_of("fifo/")
        self._tickets: dict[str, dict[tuple[str, str], int]] = {}  # queue -> (rid, ticket) -> revision
        self._free: dict[str, dict[str, int]] = {}  # queue -> rid -> free slots
        self.listeners: list[Callable[[], None]] = []
        """Called after every change of the mirror (keep them cheap: they run in the watch's task)."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def _ticket_key(self, task_queue: str, ticket: str) -> bytes:
        return self.prefix + f"t/{_part(task_queue)}/{_part(self.store.replica_id)}/{_part(ticket)}".encode()

    def _free_key(self, task_queue: str) -> bytes:
        return self.prefix + f"c/{_part(task_queue)}/{_part(self.store.replica_id)}".encode()

    @property
    def _lease(self) -> int:
        assert self.store.lease is not None, "the store is not started"
        return self.store.lease.id

    async def start(self) -> None:
        """Fill the mirror and follow the store."""
        revision = await self._load()
        self._task = asyncio.create_task(self._follow(revision), name="etcd-waiting-board")
        # A mirror that stopped following would keep creates waiting behind tickets long gone.
        self.store.supervise(self._task, lambda: self._closing)

    async def close(self) -> None:
        """Stop following the store (the keys go with the replica's lease)."""
        self._closing = True
        await stop(self._task)

    # ------------------------------------------------------------------ writes

    async def enqueue(self, task_queue: str, ticket: str) -> int:
        """Record a create waiting here; returns its place in the cluster-wide queue (a revision)."""
        reply = await self.store.client.put(self._ticket_key(task_queue, ticket), b"", lease=self._lease)
        revision = int(reply.header.revision)
        self._tickets.setdefault(task_queue, {})[(self.store.replica_id, ticket)] = revision
        return revision

    async def dequeue(self, task_queue: str, ticket: str) -> None:
        """The create stopped waiting (placed, gave up or failed)."""
        self._drop_ticket(task_queue, (self.store.replica_id, ticket))
        await self.store.client.delete(self._ticket_key(task_queue, ticket))

    async def publish_free(self, task_queue: str, free: int) -> None:
        """Say how many more sessions of ``task_queue`` this replica's workers take now."""
        if free > 0:
            await self.store.client.put(self._free_key(task_queue), str(free).encode(), lease=self._lease)
        else:
            await self.store.client.delete(self._free_key(task_queue))

    # ------------------------------------------------------------------ reads (the mirror)

    def tickets(self, task_queue: str) -> list[Ticket]:
        """The creates waiting for ``task_queue`` cluster-wide, oldest first."""
        return sorted((revision, rid, ticket) for (rid, ticket), revision in self._tickets.get(task_queue, {}).items())

    def waiting(self, task_queue: str) -> bool:
        """Whether any create waits for ``task_queue`` (per the mirror)."""
        return bool(self._tickets.get(task_queue))


    def free(self, task_queue: str) -> dict[str, int]:
        """Free slots of ``task_queue`` per replica (this one included, as last published)."""
        return dict(self._free.get(task_queue, {}))

    def poke(self) -> None:
        """Tell the listeners the mirror changed."""
        for listener in list(self.listeners):
            listener()

    # ------------------------------------------------------------------ following the store

    def _drop_ticket(self, task_queue: str, who: tuple[str, str]) -> None:
        queue = self._tickets.get(task_queue)
        if queue is not None:
            queue.pop(who, None)
            if not queue:
                del self._tickets[task_queue]

    async def _load(self) -> int:
        reply = await self.store.client.get_prefix(self.prefix)
        self._tickets.clear()
        self._free.clear()
        for kv in reply.kvs:
            self._apply_one(kv.key, kv.value, kv.create_revision, put=True)
        self.poke()
        return int(reply.header.revision)

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async with await self.store.client.watch(self.prefix, prefix_end(self.prefix),
                                                         start_revision=revision + 1) as watch:
                    async for batch in watch:
                        self._apply(batch.events)
                        revision = batch.revision
            except EtcdCompactedError:
                with contextlib.suppress(EtcdError):
                    revision = await self._load()
            except EtcdError as error:
                log.warning("etcd store: mirror of waiting creates interrupted: %s", error)
                await asyncio.sleep(0.2)

    def _apply(self, events: Sequence[pb.Event]) -> None:
        for event in events:
            self._apply_one(event.kv.key, event.kv.value, event.kv.create_revision, put=event.type == PUT)
        self.poke()

    def _apply_one(self, key: bytes, value: bytes, create_revision: int, *, put: bool) -> None:
        kind, _, rest = key[len(self.prefix):].decode().partition("/")
        parts = [unquote(p) for p in rest.split("/")]
        if kind == "t" and len(parts) == 3:
            queue, rid, ticket = parts
            if put:
                self._tickets.setdefault(queue, {})[(rid, ticket)] = create_revision
            else:
                self._drop_ticket(queue, (rid, ticket))
        elif kind == "c" and len(parts) == 2:
            queue, rid = parts
            if put:
                with contextlib.suppress(ValueError):
                    self._free.setdefault(queue, {})[rid] = int(value)
            else:
                free = self._free.get(queue)
                if free is not None:
                    free.pop(rid, None)
