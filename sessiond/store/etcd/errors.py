"""The etcd client's errors: one root, and a subclass per thing a caller does differently.

The one distinction that matters most: a *write* (Put, DeleteRange, Txn, Compact, LeaseGrant,
LeaseRevoke) that fails with UNAVAILABLE, DEADLINE_EXCEEDED or a broken connection may still have
been applied by etcd — raft may have committed it before the answer was lost. Such a failure is an
:class:`EtcdOutcomeUnknownError`, and the client never retries it: only the caller knows whether
the write is safe to repeat or must be read back first. Reads are retried on another member
within their deadline, and end in :class:`EtcdUnavailableError`.
"""

from __future__ import annotations

import grpc

__all__ = [
    "EtcdAuthError",
    "EtcdClosedError",
    "EtcdCompactedError",
    "EtcdError",
    "EtcdOutcomeUnknownError",
    "EtcdRequestError",
    "EtcdUnavailableError",
    "LeaseNotFoundError",
    "WatchCancelledError",
    "from_rpc_error",
]


class EtcdError(Exception):
    """Root of the etcd client's errors. ``code`` is the gRPC status when one was received."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailableError(EtcdError):
    """No member answered in time (all unreachable, no leader, or the deadline passed). Transient."""


class EtcdOutcomeUnknownError(EtcdUnavailableError):
    """A write failed in a way that leaves it unknown whether etcd applied it. Never retried blindly."""


class EtcdCompactedError(EtcdError):
    """The revisions asked for were compacted away. ``compact_revision`` is the oldest one left (0 = unknown)."""

    def __init__(self, message: str, compact_revision: int = 0, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        self.compact_revision = compact_revision


class EtcdAuthError(EtcdError):
    """Authentication failed (bad user or password) or the user may not do this (permission denied)."""


class EtcdRequestError(EtcdError):
    """etcd refused the request itself (invalid argument, too many operations, future revision...)."""


class LeaseNotFoundError(EtcdRequestError):
    """The lease does not exist (never granted, revoked, or expired)."""


class EtcdClosedError(EtcdError):
    """The client was closed."""


class WatchCancelledError(EtcdError):
    """etcd ended a watch for a reason other than compaction (``reason`` says which)."""


# gRPC codes after which a write may or may not have been applied.
_UNCERTAIN = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
     grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
)


def from_rpc_error(error: grpc.RpcError, *, write: bool) -> EtcdError:
    """Classify a failed call. ``write`` says whether the call could have changed etcd's state."""
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    details = (error.details() if isinstance(error, grpc.aio.AioRpcError) else None) or str(error)
    message = f"etcd: {code.name if code else 'error'}: {details}"
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return EtcdCompactedError(message, code=code)
    refused_login = ("authentication failed" in details) or ("user name is empty" in details)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code == grpc.StatusCode.INVALID_ARGUMENT and refused_login
    ):
        return EtcdAuthError(message, code)
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return LeaseNotFoundError(message, code)
    if code is None or code in _UNCERTAIN:
        if write:
            return EtcdOutcomeUnknownError(message + " (the write may or may not have been applied)", code)
        return EtcdUnavailableError(message, code)
    return EtcdRequestError(message, code)
