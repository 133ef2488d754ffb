"""Message sizes, cheaply: the one message-size limit (SPEC §6.1) and the worker backlog's byte count.

``--max-message-size`` (L) bounds every message sessiond sends or accepts. The grpc transport itself
is set to twice that (:func:`transport_cap`), so a message over L from a peer that did not check
still arrives and gets a precise answer (MESSAGE_TOO_LARGE, or a ``ResultTooLarge`` failure of that
one activity) rather than grpc's RESOURCE_EXHAUSTED, which would end a worker's whole stream.

Exact sizes cost a serialisation (``ByteSize()`` encodes the message: ~0.5 ms per MiB here), so the
hot paths use an upper bound built from field lengths and fall back to the exact size only when
the bound is over the limit. (The libraries bound their own messages the same way, in
``sessiond_client._limits``; the server keeps its copy so as not to depend on a library's internals.)
"""

from __future__ import annotations

from collections.abc import Mapping

from sessiond_client.api.v1 import session_pb2, worker_pb2

# The failure type of an activity whose result was too large; the worker library reports the same.
RESULT_TOO_LARGE = "ResultTooLarge"

# Upper bounds of the protobuf framing: a map entry is tag + length of the entry, of the key and of
# the value (each at most 1 + 5 bytes); a message around its variable fields (ids, activity type,
# timeout, incarnation, interval and their tags) stays under the fixed part.
_MAP_ENTRY = 18
_FIXED = 1024
_GRPC_INT_MAX = 2**31 - 1


def transport_cap(limit: int) -> int:
    """The grpc max send/receive length for a message-size limit: twice the limit (within int32)."""
    return min(2 * limit, _GRPC_INT_MAX)


def _map_bytes(entries: Mapping[str, str] | Mapping[str, bytes]) -> int:
    if not entries:  # the usual case, and len() of a map is O(1)
        return 0
    total = _MAP_ENTRY * len(entries)
    for key in entries:  # not .items(): on a protobuf map that is a slow Python-level view
        total += len(key) + len(entries[key])
    return total


def payload_bytes(payload: session_pb2.Payload) -> int:
    """An upper bound of a payload's encoded size."""
    return len(payload.data) + _map_bytes(payload.metadata) + 16


def task_bytes(payload: session_pb2.Payload, headers: Mapping[str, str], activity_type: str, session_id: str,
               details: session_pb2.Payload | None = None) -> int:
    """An upper bound of the encoded size of the stream message that carries an activity task
    (with ``details``, the heartbeat details a retry resumes from)."""
    extra = 0 if details is None else payload_bytes(details)
    return payload_bytes(payload) + extra + _map_bytes(headers) + len(activity_type) + len(session_id) + _FIXED


def result_bytes(result: worker_pb2.ActivityResult) -> int:
    """An upper bound of the encoded size of a worker message that carries an activity result."""
    if result.HasField("result"):
        body = payload_bytes(result.result)
    else:
        failure = result.failure
        body = len(failure.type) + len(failure.message) + payload_bytes(failure.details)
    return body + len(result.activity_id) + len(result.session_id) + _FIXED


def too_large_result(result: worker_pb2.ActivityResult, size: int, limit: int) -> worker_pb2.ActivityResult:
    """The failure that replaces a result over the limit (the activity fails; nothing else does)."""
    return worker_pb2.ActivityResult(
        activity_id=result.activity_id, session_id=result.session_id,
        failure=session_pb2.ActivityFailure(
            type=RESULT_TOO_LARGE, non_retryable=True,
            message=f"the activity's result is {size} bytes, over the server's max_message_size of {limit} bytes",
        ),
    )
