"""One replica of a replicated sessiond (SPEC §6.5, distributed.md §3): the engine's side of the etcd
store, in five parts: :class:`~.commits.Commits` (reserve -> commit -> publish),
:class:`~.ownership.Ownership` (claims, adoption, the janitor), :class:`~.routing.Router`
(forwarding to other replicas), :class:`~.waiters.Admission` (creates served oldest-first
across replicas, free-slot hints) and :class:`~.listing.Listing` (List* of the whole cluster).
Only replicas import this package (it loads the etcd store).

Self-fencing: when the store fences itself (lease renewals stopped, or one of the replica's
long-lived tasks died: see :meth:`~sessiond.store.etcd.store.EtcdStore.supervise`), the replica ends
every worker stream (the workers hold their sessions and register at another replica) and stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sessiond.core.token import TokenKeys
from sessiond.server.cluster.commits import Commits
from sessiond.server.cluster.connect import open_store
from sessiond.server.cluster.keys import owner_key_name, request_key_name
from sessiond.server.cluster.listing import Listing
from sessiond.server.cluster.ownership import Ownership
from sessiond.server.cluster.routing import Router
from sessiond.server.cluster.waiters import Admission
from sessiond.supervise import stop

if TYPE_CHECKING:
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Cluster", "open_store", "owner_key_name", "request_key_name"]

log = logging.getLogger("sessiond.cluster")


class Cluster:
    """The replica's glue between the engine and its :class:`~sessiond.store.etcd.store.EtcdStore`."""

    def __init__(self, engine: Engine, store: EtcdStore) -> None:
        self.engine = engine
        self.store = store
        self.fenced = asyncio.Event()
        self.commits = Commits(engine, store, self.fenced)
        self.ownership = Ownership(engine, store, self.fenced, self.commits.settled)
        self.routes = Router(engine, store)
        self.admission = Admission(engine, store)
        self.listing = Listing(store, self.routes)
        self._janitor: asyncio.Task[None] | None = None
        self._closing = False
        self.fenced_reason: str | None = None
        """Why this replica fenced itself (set with :attr:`fenced`)."""
        store.on_fenced.append(self._fenced)

    async def start(self) -> None:
        """Register the replica in the store (and, unless a token key is configured, take the
        cluster's signing key from it: a recreate token or a worker's session report signed by one
        replica must verify at every other), then run the janitor."""
        await self.store.start()
        config = self.engine.config
        if config.token_key is None and config.token_key_file is None:
            self.engine.signer.use(TokenKeys(await self.store.cluster_secret("token_key")))
        await self.admission.start()
        self._janitor = asyncio.create_task(self.ownership.janitor_loop(), name="sessiond-janitor")
        # Dead, it would leave the sessions of dead replicas' workers OPEN for ever.
        self.store.supervise(self._janitor, lambda: self._closing)

    async def close(self) -> None:
        """Stop the janitor; close the channels to other replicas."""
        self._closing = True
        await stop(self._janitor)
        await self.admission.close()
        await self.routes.close()

    def _fenced(self, reason: str) -> None:
        log.error("replica fenced itself (%s): ending every worker stream; workers move to another replica",
                  reason)
        self.fenced_reason = reason
        self.fenced.set()
        self.engine.begin_shutdown()
