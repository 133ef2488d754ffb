"""Builders for Txn compares and operations, so callers write ``modified_at(key, rev)`` rather than
filling protobuf oneofs by hand.

An absent key has version, create revision and mod revision 0, so "the key does not exist" is
``created_at(key, 0)`` and "nobody rewrote the key since I wrote it at revision r" (the fence of
distributed.md §3.2) is ``modified_at(key, r)``.
"""

from __future__ import annotations

from typing import Literal

from sessiond.store.etcd.api import v3_subset_pb2 as pb

__all__ = [
    "compare",
    "created_at",
    "delete_op",
    "get_op",
    "lease_is",
    "modified_at",
    "prefix_end",
    "put_op",
    "value_is",
    "version_is",
]

Operator = Literal["==", "!=", "<", ">"]
Target = Literal["version", "create", "mod", "value", "lease"]

_RESULTS = {
    "==": pb.Compare.COMPARE_RESULT_EQUAL,
    "!=": pb.Compare.COMPARE_RESULT_NOT_EQUAL,
    "<": pb.Compare.COMPARE_RESULT_LESS,
    ">": pb.Compare.COMPARE_RESULT_GREATER,
}
_TARGETS = {
    "version": pb.Compare.COMPARE_TARGET_VERSION,
    "create": pb.Compare.COMPARE_TARGET_CREATE,
    "mod": pb.Compare.COMPARE_TARGET_MOD,
    "value": pb.Compare.COMPARE_TARGET_VALUE,
    "lease": pb.Compare.COMPARE_TARGET_LEASE,
}


def compare(key: bytes, target: Target, op: Operator, operand: int | bytes) -> pb.Compare:
    """``<target of key> <op> <operand>``: the general form of the helpers below."""
    if (target == "value") != isinstance(operand, bytes):
        raise TypeError(f"a {target} compare needs {'bytes' if target == 'value' else 'an int'}")
    out = pb.Compare(key=key, target=_TARGETS[target], result=_RESULTS[op])
    if isinstance(operand, bytes):
        out.value = operand
    elif target == "version":
        out.version = operand
    elif target == "create":
        out.create_revision = operand
    elif target == "mod":
        out.mod_revision = operand
    else:
        out.lease = operand
    return out


def value_is(key: bytes, value: bytes) -> pb.Compare:
    """The key exists with exactly this value."""
    return compare(key, "value", "==", value)


def version_is(key: bytes, version: int) -> pb.Compare:
    """The key's version (writes since its creation; 0 = absent) equals ``version``."""
    return compare(key, "version", "==", version)


def created_at(key: bytes, revision: int) -> pb.Compare:
    """The key was created at ``revision``; ``created_at(key, 0)`` means the key is absent."""
    return compare(key, "create", "==", revision)


def modified_at(key: bytes, revision: int) -> pb.Compare:
    """The key was last changed at ``revision`` (the ownership fence; 0 = absent)."""
    return compare(key, "mod", "==", revision)


def lease_is(key: bytes, lease: int) -> pb.Compare:
    """The key is attached to ``lease`` (0 = no lease)."""
    return compare(key, "lease", "==", lease)


def put_op(key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> pb.RequestOp:
    """A put inside a Txn."""
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease, prev_kv=prev_kv))


def delete_op(key: bytes, range_end: bytes = b"", *, prev_kv: bool = False) -> pb.RequestOp:
    """A delete of a key (or of [key, range_end)) inside a Txn."""
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv))


def get_op(key: bytes, range_end: bytes = b"", *, keys_only: bool = False) -> pb.RequestOp:
    """A read inside a Txn (typically in the failure branch, to learn why a compare failed)."""
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end, keys_only=keys_only))


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover exactly the keys starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every byte is 0xff (or the prefix is empty): the range runs to the end of the keyspace
