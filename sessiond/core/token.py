"""Recreate tokens: versioned, stable, opaque bytes naming one worker of one task queue.

A token holds no secret and no expiry (as in the original): it only says where to place.
Version 1 layout: ``b"sdrt" + b"\\x01" + crc32 (4 bytes, big endian) + JSON``. The checksum
tells a corrupted or foreign blob from a real token.
"""

from __future__ import annotations

import json
import zlib

from sessiond.core.errors import InvalidRecreateTokenError
from sessiond.core.model import WorkerKey
from sessiond.core.names import name_problem

_MAGIC = b"sdrt"
_V1 = 1


def encode_token(key: WorkerKey) -> bytes:
    """The recreate token for sessions on worker ``key``."""
    body = json.dumps({"q": key.task_queue, "w": key.worker_id}, separators=(",", ":")).encode()
    return _MAGIC + bytes([_V1]) + zlib.crc32(body).to_bytes(4, "big") + body


def decode_token(token: bytes) -> WorkerKey:
    """The worker a token names; raises :class:`InvalidRecreateTokenError` if it is not a token."""
    if len(token) < 9 or not token.startswith(_MAGIC):
        raise InvalidRecreateTokenError("recreate_token: not a sessiond recreate token")
    if token[4] != _V1:
        raise InvalidRecreateTokenError(f"recreate_token: unsupported token version {token[4]}")
    crc, body = int.from_bytes(token[5:9], "big"), token[9:]
    if zlib.crc32(body) != crc:
        raise InvalidRecreateTokenError("recreate_token: checksum mismatch (corrupted token)")
    try:
        data = json.loads(body)
        queue, worker_id = data["q"], data["w"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise InvalidRecreateTokenError("recreate_token: malformed token body") from exc
    if not isinstance(queue, str) or not isinstance(worker_id, str) or not queue or not worker_id:
        raise InvalidRecreateTokenError("recreate_token: malformed token body")
    # Only a forged token can name what no worker could register as: reject it here rather than
    # let it wait its creation_timeout for a worker that cannot exist.
    if name_problem(queue) is not None or name_problem(worker_id) is not None:
        raise InvalidRecreateTokenError("recreate_token: names no valid worker")
    return WorkerKey(queue, worker_id)
