"""The message-size limit on the library's side (SPEC §6.1: one limit, both directions).

sessiond refuses messages over its ``--max-message-size`` (default 16 MiB) and announces it to
workers. The client checks activity inputs against its own ``max_message_size`` before sending; the
worker checks every activity result against the limit its server announced, and reports a too-large
one as a ``ResultTooLarge`` failure of that activity, so it never sends a message the server's
transport would refuse (which would end the whole stream).

An exact size costs an encoding (``ByteSize()`` serialises the message), so the checks start from
an upper bound made of field lengths and encode only when that bound is over the limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from sessiond_client.api.v1 import session_pb2

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""The server's default ``--max-message-size``, in bytes."""

UNANNOUNCED_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""What a worker assumes when its server announces no limit (an older server: grpc's default)."""

RESULT_TOO_LARGE = "ResultTooLarge"
"""The ``ActivityError.type`` of an activity whose result (or failure) was over the limit."""

# Upper bounds of the protobuf framing: a map entry is tag + length of the entry, the key and the
# value; a message around its variable fields stays under the fixed part.
_MAP_ENTRY = 18
_FIXED = 1024


def map_bytes(entries: Mapping[str, str] | Mapping[str, bytes]) -> int:
    """An upper bound of the encoded size of a string map."""
    if not entries:  # the usual case, and len() of a map is O(1)
        return 0
    total = _MAP_ENTRY * len(entries)
    for key in entries:  # not .items(): on a protobuf map that is a slow Python-level view
        total += len(key) + len(entries[key])
    return total


def payload_bytes(payload: session_pb2.Payload) -> int:
    """An upper bound of a payload's encoded size."""
    return len(payload.data) + map_bytes(payload.metadata) + 16


def oversize(message: Message, variable_bytes: int, limit: int) -> int:
    """0 when ``message`` fits in ``limit`` bytes, else its exact encoded size.

    ``variable_bytes`` is an upper bound of its variable fields (payloads, maps, strings); the
    message is encoded to measure it only when that bound plus framing is over the limit.
    """
    if variable_bytes + _FIXED <= limit:
        return 0
    size = message.ByteSize()
    return size if size > limit else 0
