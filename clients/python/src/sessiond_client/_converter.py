"""Payload conversion: Python values to ``sessiond.v1.Payload`` and back.

The default is JSON (``encoding: json/plain``) with ``bytes`` passed through raw
(``encoding: binary/plain``). Activity arguments travel as one payload: a JSON array of the
arguments, or the raw bytes when the only argument is ``bytes``. Subclass
:class:`PayloadConverter` to plug in another encoding; the caller and the worker must agree.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from sessiond_client.api.v1 import session_pb2

ENCODING_KEY = "encoding"
JSON_ENCODING = b"json/plain"
BINARY_ENCODING = b"binary/plain"


class PayloadConverter(ABC):
    """Turns values into payloads and back. Implementations must be thread-safe (sync activities)."""

    @abstractmethod
    def to_payload(self, value: Any) -> session_pb2.Payload:
        """Encode one value (an activity result or failure details)."""

    @abstractmethod
    def from_payload(self, payload: session_pb2.Payload) -> Any:
        """Decode one value. An empty payload (no data, no metadata) decodes to ``None``."""

    def encode_args(self, args: Sequence[Any]) -> session_pb2.Payload:
        """Encode activity arguments as one payload: one ``bytes`` argument raw, anything else as a list."""
        if len(args) == 1 and isinstance(args[0], bytes | bytearray | memoryview):
            return self.to_payload(bytes(args[0]))
        return self.to_payload(list(args))

    def decode_args(self, payload: session_pb2.Payload) -> list[Any]:
        """Decode the payload :meth:`encode_args` made back into positional arguments."""
        if _is_empty(payload):
            return []
        value = self.from_payload(payload)
        if isinstance(value, bytes):
            return [value]
        if not isinstance(value, list):
            raise TypeError(f"activity input must encode a list of arguments, got {type(value).__name__}")
        return value


class DefaultPayloadConverter(PayloadConverter):
    """JSON for every value, except ``bytes``, which pass through unchanged."""

    def __init__(self, *, json_encoder: type[json.JSONEncoder] | None = None) -> None:
        """Build the converter; ``json_encoder`` lets you teach JSON extra types (dataclasses, ...)."""
        self._encoder = json_encoder

    def to_payload(self, value: Any) -> session_pb2.Payload:
        """Encode ``value``: bytes as ``binary/plain``, anything else as compact UTF-8 JSON."""
        if isinstance(value, bytes | bytearray | memoryview):
            return session_pb2.Payload(metadata={ENCODING_KEY: BINARY_ENCODING}, data=bytes(value))
        data = json.dumps(value, cls=self._encoder, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return session_pb2.Payload(metadata={ENCODING_KEY: JSON_ENCODING}, data=data.encode("utf-8"))

    def from_payload(self, payload: session_pb2.Payload) -> Any:
        """Decode a payload by its ``encoding`` metadata."""
        if _is_empty(payload):
            return None
        encoding = payload.metadata.get(ENCODING_KEY, b"")
        if encoding == BINARY_ENCODING:
            return bytes(payload.data)
        if encoding == JSON_ENCODING:
            return json.loads(payload.data.decode("utf-8"))
        raise ValueError(f"unknown payload encoding {encoding.decode('utf-8', 'replace')!r}")


def _is_empty(payload: session_pb2.Payload) -> bool:
    return not payload.data and not payload.metadata
