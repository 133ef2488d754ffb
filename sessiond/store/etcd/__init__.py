"""The etcd store's client: a thin typed grpc.aio layer over the part of etcd's v3 API sessiond uses.

Importing this package loads grpc stubs for etcd; the in-memory store never imports it.
"""

from sessiond.store.etcd.client import EtcdAuth, EtcdClient, EtcdTLS
from sessiond.store.etcd.errors import (
    EtcdAuthError,
    EtcdClosedError,
    EtcdCompactedError,
    EtcdError,
    EtcdOutcomeUnknownError,
    EtcdRequestError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    WatchCancelledError,
)
from sessiond.store.etcd.lease import Lease, LeaseKeeper
from sessiond.store.etcd.watch import Watch, WatchBatch

__all__ = [
    "EtcdAuth",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdClosedError",
    "EtcdCompactedError",
    "EtcdError",
    "EtcdOutcomeUnknownError",
    "EtcdRequestError",
    "EtcdTLS",
    "EtcdUnavailableError",
    "Lease",
    "LeaseKeeper",
    "LeaseNotFoundError",
    "Watch",
    "WatchBatch",
    "WatchCancelledError",
]
