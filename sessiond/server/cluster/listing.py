"""ListSessions and ListWorkers on a replica list the whole cluster (SPEC §6.5), with the filters,
paging and visibility of a single process.

* **Sessions** are read from the store (every replica's, terminal ones until their retention
  passes), oldest placement first; a page token is the etcd create revision of the last session
  looked at, so a token from one replica continues on any other.
* **Workers** are each replica's connected workers: the replica asks every live replica for the
  same page (after the same worker key) and merges them in (task queue, worker id) order; the
  token is the last worker key, as in a single process. A replica that does not answer fails the
  call with ``OWNER_UNAVAILABLE`` (retry) rather than return a page with holes. ``waiting`` joins
  every replica's waiting requests on the first page.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from sessiond.core.errors import OwnerUnavailableError
from sessiond.core.model import SessionState, WorkerKey
from sessiond.server import validate
from sessiond.store.etcd.errors import EtcdError
from sessiond.store.etcd.listing import stored_sessions

if TYPE_CHECKING:
    from sessiond.server.cluster.routing import Router
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Listing"]

Context = grpc.aio.ServicerContext[Any, Any]


class Listing:
    """The cluster-wide List* of one replica."""

    def __init__(self, store: EtcdStore, routes: Router) -> None:
        self.store = store
        self.routes = routes

    async def sessions(self, *, task_queue: str, owner: str, state: SessionState | None, principal: str | None,
                       resource: str, after: int, limit: int) -> tuple[list[session_pb2.Session], int | None]:
        """One page of the cluster's sessions matching the filters (see the module docstring)."""
        def keep(record: bytes) -> bool:
            session = session_pb2.Session.FromString(record)
            return not ((task_queue and session.task_queue != task_queue) or (owner and session.owner != owner)
                        or (principal is not None and session.principal != principal)
                        or (state is not None and session.state != state.value)
                        or (resource and session.resources.get(resource, 0) <= 0))

        try:
            records, more = await stored_sessions(self.store, keep, after=after, limit=limit)
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
        return [session_pb2.Session.FromString(r) for r in records], more

    async def workers(self, request: session_service_pb2.ListWorkersRequest, context: Context,
                      local: session_service_pb2.ListWorkersResponse) -> session_service_pb2.ListWorkersResponse:
        """Merge this replica's page ``local`` with every other live replica's page for ``request``."""
        size, _ = validate.worker_page(request.page_size, request.page_token)
        others = [a for rid, a in sorted(self.store.replicas().items()) if rid != self.store.replica_id]
        answers = [local, *await asyncio.gather(*(
            self.routes.call(address, "ListWorkers", request, context, session_service_pb2.ListWorkersResponse)
            for address in others))]
        workers = sorted((w for answer in answers for w in answer.workers), key=lambda w: (w.task_queue, w.worker_id))
        more = len(workers) > size or any(answer.next_page_token for answer in answers)
        page = workers[:size]
        token = validate.worker_token(WorkerKey(page[-1].task_queue, page[-1].worker_id)) if more and page else ""
        return session_service_pb2.ListWorkersResponse(
            workers=page, next_page_token=token, waiting=[w for answer in answers for w in answer.waiting])
