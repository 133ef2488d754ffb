"""The store's names of what sessiond keeps unique across replicas, and the end of a session whose
worker is gone (shared by the ownership and janitor paths)."""

from __future__ import annotations

import time
from urllib.parse import quote

from sessiond_client.api.v1 import session_pb2

from sessiond.core.model import WorkerKey
from sessiond.store.base import EndSession, StoredSession

__all__ = ["owner_key_name", "request_key_name", "worker_lost_end", "worker_name"]


def request_key_name(task_queue: str, worker_id: str, request_id: str, recreated: bool,
                     principal: str = "") -> str | None:
    """The store's name of a request id in its scope (the core's: per principal, then create per
    task queue or recreate per worker), or None without a request id."""
    if not request_id:
        return None
    scope = ("recreate", task_queue, worker_id) if recreated else ("create", task_queue)
    return "/".join(quote(part, safe="") for part in (principal, *scope, request_id))


def owner_key_name(principal: str, owner: str) -> str | None:
    """The store's name of an owner (one OPEN session per owner of a principal), or None."""
    if not owner:
        return None
    return f"{quote(principal, safe='')}/{quote(owner, safe='')}"


def worker_name(worker: WorkerKey) -> tuple[str, str]:
    """The store's name of a worker: (task queue, worker id)."""
    return worker.task_queue, worker.worker_id


def worker_lost_end(stored: StoredSession, why: str) -> EndSession:
    """The end of a stored OPEN session whose worker is gone: FAILED WORKER_LOST, now."""
    record = session_pb2.Session.FromString(stored.record)
    record.state = session_pb2.SESSION_STATE_FAILED
    record.failure.cause = session_pb2.FAILURE_CAUSE_WORKER_LOST
    record.failure.message = why
    record.close_time.FromNanoseconds(time.time_ns())
    return EndSession(stored.session_id, stored.worker, record.SerializeToString(),
                      owner_key_name(record.principal, record.owner),
                      request_key_name(record.task_queue, record.worker.worker_id, record.request_id,
                                       record.recreated, record.principal))
