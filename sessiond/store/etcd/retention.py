"""Retention buckets: the leases terminal session records are written on.

A terminal record (and its request key) is put on a shared lease that lives ``retention`` seconds;
etcd deletes a bucket's keys in one step when it expires, so there is no cleanup loop. A new bucket
is granted every :data:`BUCKET_SECONDS` or :data:`BUCKET_KEYS` keys.
"""

from __future__ import annotations

import logging
import time

from sessiond.store.etcd.client import EtcdClient
from sessiond.store.etcd.errors import EtcdError

__all__ = ["BUCKET_KEYS", "BUCKET_SECONDS", "RetentionBuckets"]

log = logging.getLogger("sessiond.store.etcd")

BUCKET_SECONDS = 10.0
BUCKET_KEYS = 500


class RetentionBuckets:
    """The current retention bucket of one replica (shared by its writer and its janitor)."""

    def __init__(self, client: EtcdClient, retention: float) -> None:
        self.client = client
        self.retention = retention
        self._bucket: tuple[int, float, int] | None = None  # (lease id, granted at, keys on it)

    def lease(self) -> int:
        """The retention bucket the next terminal record goes on (0 = none: :meth:`refresh`
        could not grant one, and the record then stays until an operator deletes it)."""
        if self._bucket is None:
            return 0
        lease_id, granted, count = self._bucket
        self._bucket = (lease_id, granted, count + 1)
        return lease_id

    async def refresh(self, ends: int) -> None:
        """Grant a new retention bucket when the current one is old or full (every 10 s or 500 keys):
        etcd deletes a bucket's keys in one step when it expires, so there is no cleanup loop."""
        now = time.monotonic()
        if (self._bucket is not None and now - self._bucket[1] < BUCKET_SECONDS
                and self._bucket[2] + ends <= BUCKET_KEYS):
            return
        try:
            lease = await self.client.grant_lease(int(self.retention) + 10, keep_alive=False)
        except EtcdError as error:
            log.warning("etcd store: no retention bucket: %s", error)
            return
        self._bucket = (lease.id, now, 0)
