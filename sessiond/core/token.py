"""Recreate tokens and session-record signatures: HMAC-SHA256 with the server's key.

A recreate token names one worker of one task queue, and the principal that worker registered as.
It is opaque bytes to callers, stable (one token may be used many times, on any server holding the
same key), and signed, so a caller cannot aim a recreate at a worker it was never given a token for.

Version 2 layout (the only one accepted)::

    b"sdrt" | 0x02 | JSON {"q": task queue, "w": worker id, "p": worker principal} | HMAC-SHA256 (32 bytes)

The MAC covers everything before it, prefixed with a domain string, and is checked before the JSON
is parsed. Version 1 tokens (``b"sdrt" | 0x01 | crc32 | JSON``, unsigned, made by sessiond 0.1) are
refused: anyone could forge one.

The same key signs the session records the server hands to workers (``SessionStarted``), under
another domain string, so that a restarted server adopts only sessions it really placed there.

Pure: keys are data handed in, time (for the previous key's acceptance period) is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from sessiond.core.errors import InvalidRecreateTokenError
from sessiond.core.model import WorkerKey
from sessiond.core.names import name_problem

_MAGIC = b"sdrt"
_V1 = 1
_V2 = 2
_MAC_BYTES = 32
_TOKEN_DOMAIN = b"sessiond recreate token v2\x00"
_RECORD_DOMAIN = b"sessiond session record v1\x00"
# The least key material accepted from an operator (256 bits, the size of the MAC).
MIN_KEY_BYTES = 32
_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """The server's signing keys: ``current`` signs and verifies; ``previous`` (after a rotation)
    only verifies, until ``previous_until`` (the core's monotonic seconds)."""

    current: bytes
    previous: bytes | None = None
    previous_until: float = -math.inf

    @staticmethod
    def ephemeral() -> TokenKeys:
        """A random key for this process only (its tokens die with it)."""
        return TokenKeys(os.urandom(MIN_KEY_BYTES))


@dataclass(frozen=True, slots=True)
class TokenTarget:
    """What a recreate token names: a worker, and the principal it must be registered by."""

    worker: WorkerKey
    principal: str


class Signer:
    """Signs and checks recreate tokens and session records with one set of :class:`TokenKeys`."""

    __slots__ = ("_cache", "keys")

    def __init__(self, keys: TokenKeys | None = None) -> None:
        self.keys = keys or TokenKeys.ephemeral()
        # A worker's token never changes: encode it once (bounded: worker ids come from workers).
        self._cache: dict[tuple[WorkerKey, str], bytes] = {}

    def use(self, keys: TokenKeys) -> None:
        """Sign and verify with ``keys`` from now on (a replica takes its cluster's shared key at
        start, before it hands out any token)."""
        self.keys = keys
        self._cache.clear()

    def _verifying(self, now: float) -> Iterable[bytes]:
        yield self.keys.current
        if self.keys.previous is not None and now < self.keys.previous_until:
            yield self.keys.previous

    # ----------------------------------------------------------------- recreate tokens

    def token(self, worker: WorkerKey, principal: str) -> bytes:
        """The recreate token for sessions on ``worker``, registered by ``principal``."""
        cached = self._cache.get((worker, principal))
        if cached is not None:
            return cached
        body = json.dumps({"q": worker.task_queue, "w": worker.worker_id, "p": principal},
                          separators=(",", ":"), ensure_ascii=False).encode()
        signed = _MAGIC + bytes([_V2]) + body
        token = signed + hmac.digest(self.keys.current, _TOKEN_DOMAIN + signed, hashlib.sha256)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[(worker, principal)] = token
        return token

    def target(self, token: bytes, now: float) -> TokenTarget:
        """The worker a token names. Raises :class:`InvalidRecreateTokenError` for anything this
        server (or one sharing its key) did not sign: forged, truncated, altered, signed with
        another key, of version 1, or naming what no worker could register as."""
        if len(token) < len(_MAGIC) + 1 or not token.startswith(_MAGIC):
            raise InvalidRecreateTokenError("recreate_token: not a sessiond recreate token")
        version = token[len(_MAGIC)]
        if version == _V1:
            raise InvalidRecreateTokenError(
                "recreate_token: an unsigned version 1 token (sessiond 0.1) is no longer accepted; "
                "take the new token from GetSessionInfo or the session")
        if version != _V2:
            raise InvalidRecreateTokenError(f"recreate_token: unsupported token version {version}")
        if len(token) < len(_MAGIC) + 1 + 2 + _MAC_BYTES:
            raise InvalidRecreateTokenError("recreate_token: truncated")
        signed, mac = token[:-_MAC_BYTES], token[-_MAC_BYTES:]
        if not any(hmac.compare_digest(hmac.digest(key, _TOKEN_DOMAIN + signed, hashlib.sha256), mac)
                   for key in self._verifying(now)):
            raise InvalidRecreateTokenError("recreate_token: bad signature (altered, or signed with another key)")
        try:
            data = json.loads(signed[len(_MAGIC) + 1:])
            queue, worker_id, principal = data["q"], data["w"], data["p"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidRecreateTokenError("recreate_token: malformed token body") from exc
        if not all(isinstance(v, str) for v in (queue, worker_id, principal)) or not queue or not worker_id:
            raise InvalidRecreateTokenError("recreate_token: malformed token body")
        # Signed by a key holder, so only a leaked key makes these fail; the name rules hold anyway.
        if any(name_problem(v) is not None for v in (queue, worker_id, principal)):
            raise InvalidRecreateTokenError("recreate_token: names no valid worker")
        return TokenTarget(WorkerKey(queue, worker_id), principal)

    # ----------------------------------------------------------------- session records

    def record_signature(self, parts: Iterable[str | int | bytes]) -> bytes:
        """The signature of a session record given as its fields (see :func:`canonical`)."""
        return hmac.digest(self.keys.current, _RECORD_DOMAIN + canonical(parts), hashlib.sha256)

    def record_valid(self, parts: Iterable[str | int | bytes], signature: bytes, now: float) -> bool:
        """True when ``signature`` is this server's (or its previous key's) signature of the record."""
        if len(signature) != _MAC_BYTES:
            return False
        message = _RECORD_DOMAIN + canonical(parts)
        return any(hmac.compare_digest(hmac.digest(key, message, hashlib.sha256), signature)
                   for key in self._verifying(now))


def canonical(parts: Iterable[str | int | bytes]) -> bytes:
    """An unambiguous byte encoding of a sequence of strings, integers and byte strings (typed and
    length-prefixed): no two different sequences encode alike, whatever they hold."""
    chunks = []
    for part in parts:
        if isinstance(part, bytes):
            data = b"b" + part
        elif isinstance(part, str):
            data = b"s" + part.encode("utf-8", "surrogatepass")
        else:
            data = b"i%d" % part
        chunks.append(len(data).to_bytes(4, "big"))
        chunks.append(data)
    return b"".join(chunks)
