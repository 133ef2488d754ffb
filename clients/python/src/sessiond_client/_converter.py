"""Payload conversion: Python values to ``sessiond.v1.Payload`` and back, guided by type hints.

The protocol is :class:`PayloadConverter`: ``to_payload(value)`` and ``from_payload(payload,
type_hint)``, plus ``encode_args`` / ``decode_args`` for an activity's positional arguments (one
payload for all of them). The caller and the worker must use compatible converters.

:class:`DefaultPayloadConverter` writes JSON (``encoding: json/plain``) and passes top-level
``bytes`` through raw (``encoding: binary/plain``). Besides the JSON types it encodes dataclasses
(as objects), ``datetime``/``date``/``time`` (ISO 8601), ``UUID`` (its string), ``Enum`` (its
value), ``Decimal`` (its string), ``bytes`` inside a structure (base64) and sets (lists). JSON loses
the Python type, so decoding follows a *type hint*: the worker decodes each argument by the
activity's parameter annotations, the caller decodes a result by the activity's return annotation
when it passes the function (or by ``result_type=``). Without a hint, a value decodes to plain JSON
types. Hints understood: the types above, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``set[X]``, ``frozenset[X]``, ``dict[K, V]``, ``TypedDict``, ``NamedTuple``, ``X | None`` and other
unions, ``Literal``, ``Any``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import json
import types
import typing
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sessiond_client.api.v1 import session_pb2

ENCODING_KEY = "encoding"
JSON_ENCODING = b"json/plain"
BINARY_ENCODING = b"binary/plain"


class PayloadConverter(ABC):
    """Turns values into payloads and back. Implementations must be thread-safe (sync activities).

    Implement :meth:`to_payload` and :meth:`from_payload`; override :meth:`encode_args` and
    :meth:`decode_args` to change how an activity's arguments share one payload.
    """

    @abstractmethod
    def to_payload(self, value: Any) -> session_pb2.Payload:
        """Encode one value (an activity result, heartbeat details or failure details)."""

    @abstractmethod
    def from_payload(self, payload: session_pb2.Payload, type_hint: Any = None) -> Any:
        """Decode one value, as ``type_hint`` when given (``None`` = whatever the encoding yields).

        An empty payload (no data, no metadata) decodes to ``None``.
        """

    def encode_args(self, args: Sequence[Any]) -> session_pb2.Payload:
        """Encode activity arguments as one payload: one ``bytes`` argument raw, anything else as a list."""
        if len(args) == 1 and isinstance(args[0], bytes | bytearray | memoryview):
            return self.to_payload(bytes(args[0]))
        return self.to_payload(list(args))

    def decode_args(self, payload: session_pb2.Payload, type_hints: Sequence[Any] | None = None) -> list[Any]:
        """Decode the payload :meth:`encode_args` made back into positional arguments.

        ``type_hints`` are the activity's parameter annotations in order (``None``: decode untyped);
        arguments past the end of the list decode untyped.
        """
        if _is_empty(payload):
            return []
        if _encoding(payload) == BINARY_ENCODING:
            return [bytes(payload.data)]
        value = self.from_payload(payload, None)
        if not isinstance(value, list):
            raise TypeError(f"activity input must encode a list of arguments, got {type(value).__name__}")
        if not type_hints:
            return value
        return [self._convert_arg(item, type_hints[i] if i < len(type_hints) else None)
                for i, item in enumerate(value)]

    def _convert_arg(self, value: Any, type_hint: Any) -> Any:
        """Convert one decoded argument to its parameter's type (default: re-encode and decode it)."""
        if type_hint is None:
            return value
        return self.from_payload(self.to_payload(value), type_hint)


class DefaultPayloadConverter(PayloadConverter):
    """JSON for every value, except top-level ``bytes``, which pass through unchanged.

    Subclass and override :meth:`to_json_value` / :meth:`from_json_value` to teach it more types
    (the pydantic converter in ``sessiond_client.contrib.pydantic`` does).
    """

    def __init__(self, *, json_encoder: type[json.JSONEncoder] | None = None) -> None:
        """Build the converter; ``json_encoder`` is an extra ``json.JSONEncoder`` tried before the built-in types."""
        self._encoder = json_encoder

    def to_payload(self, value: Any) -> session_pb2.Payload:
        """Encode ``value``: bytes as ``binary/plain``, anything else as compact UTF-8 JSON."""
        if isinstance(value, _BINARY_TYPES):
            payload = session_pb2.Payload(data=bytes(value))
            # Set, not passed as ``metadata={...}``: the constructor fills a map through a
            # Python-level update (2.8 vs 1.1 µs per payload, on every activity's input and result).
            payload.metadata[ENCODING_KEY] = BINARY_ENCODING
            return payload
        data = json.dumps(value, cls=self._encoder, default=self.to_json_value, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)
        payload = session_pb2.Payload(data=data.encode("utf-8"))
        payload.metadata[ENCODING_KEY] = JSON_ENCODING
        return payload

    def from_payload(self, payload: session_pb2.Payload, type_hint: Any = None) -> Any:
        """Decode a payload by its ``encoding`` metadata, then convert it to ``type_hint``."""
        if _is_empty(payload):
            return None
        encoding = _encoding(payload)
        if encoding == BINARY_ENCODING:
            return bytes(payload.data)
        if encoding == JSON_ENCODING:
            return self.from_json_value(json.loads(payload.data.decode("utf-8")), type_hint)
        raise ValueError(f"unknown payload encoding {encoding.decode('utf-8', 'replace')!r}")

    def decode_args(self, payload: session_pb2.Payload, type_hints: Sequence[Any] | None = None) -> list[Any]:
        """Decode arguments, each by its parameter's type hint (see :class:`PayloadConverter`)."""
        if _is_empty(payload):
            return []
        if _encoding(payload) == BINARY_ENCODING:
            return [bytes(payload.data)]
        value = self.from_payload(payload)
        if not isinstance(value, list):
            raise TypeError(f"activity input must encode a list of arguments, got {type(value).__name__}")
        hints = type_hints or ()
        args = []
        for i, item in enumerate(value):
            try:
                args.append(self.from_json_value(item, hints[i] if i < len(hints) else None))
            except ValueError as exc:  # pydantic's ValidationError too
                raise ValueError(f"argument {i + 1}: {exc}") from exc
            except TypeError as exc:
                raise TypeError(f"argument {i + 1}: {exc}") from exc
        return args

    def to_json_value(self, value: Any) -> Any:
        """Turn a value JSON cannot encode into one it can (``json.dumps``'s ``default`` hook).

        Raises:
            TypeError: The value has no JSON form (the message names its type).
        """
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, uuid.UUID | Decimal):
            return str(value)
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(value)).decode("ascii")
        if isinstance(value, set | frozenset):
            return sorted(value) if all(isinstance(v, str | int | float) for v in value) else list(value)
        if isinstance(value, dt.timedelta):
            return value.total_seconds()
        raise TypeError(f"cannot encode a {type(value).__name__} as JSON: use a dataclass, a JSON type, "
                        "or plug in another converter")

    def from_json_value(self, value: Any, type_hint: Any) -> Any:
        """Convert a decoded JSON value to ``type_hint`` (``None`` or ``Any``: leave it as it is).

        Raises:
            TypeError, ValueError: The value does not fit the hint (the message says where).
        """
        return _convert(self, value, type_hint, "value")


_NONE_TYPES: tuple[Any, ...] = (None, type(None))
_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
}


def _convert(converter: DefaultPayloadConverter, value: Any, hint: Any, where: str) -> Any:
    if hint is None or hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return converter.from_json_value(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(converter, value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: expected one of {args!r}, got {value!r}")
        return value
    if value is None:
        if hint in _NONE_TYPES:
            return None
        raise TypeError(f"{where}: expected {_name(hint)}, got null")
    if origin in (list, Sequence, typing.Sequence) or hint in (list, Sequence):
        items = _expect(value, list, where)
        item = args[0] if args else None
        return [converter.from_json_value(v, item) for v in items]
    if origin in (set, frozenset) or hint in (set, frozenset):
        items = _expect(value, list, where)
        item = args[0] if args else None
        kind = frozenset if (origin or hint) is frozenset else set
        return kind(converter.from_json_value(v, item) for v in items)
    if origin is tuple or hint is tuple:
        items = _expect(value, list, where)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else None
            return tuple(converter.from_json_value(v, item) for v in items)
        if len(items) != len(args):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(items)}")
        return tuple(converter.from_json_value(v, a) for v, a in zip(items, args, strict=True))
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        obj = _expect(value, dict, where)
        key_hint, value_hint = args if args else (None, None)
        return {converter.from_json_value(k, key_hint): converter.from_json_value(v, value_hint)
                for k, v in obj.items()}
    if not isinstance(hint, type):
        return value  # a hint this converter does not know (a TypeVar, a Protocol): leave the value
    return _convert_class(converter, value, hint, where)


def _convert_class(converter: DefaultPayloadConverter, value: Any, hint: type, where: str) -> Any:
    if hint in _SCALARS:
        if isinstance(value, bool) and hint is not bool:
            raise TypeError(f"{where}: expected {hint.__name__}, got a boolean")
        if not isinstance(value, _SCALARS[hint]):
            raise TypeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return hint(value)
    if issubclass(hint, enum.Enum):
        return hint(value)
    if issubclass(hint, dt.datetime):
        return hint.fromisoformat(_expect(value, str, where))
    if issubclass(hint, dt.date):
        return hint.fromisoformat(_expect(value, str, where))
    if issubclass(hint, dt.time):
        return hint.fromisoformat(_expect(value, str, where))
    if issubclass(hint, dt.timedelta):
        return dt.timedelta(seconds=float(value))
    if issubclass(hint, uuid.UUID):
        return hint(_expect(value, str, where))
    if issubclass(hint, Decimal):
        return hint(str(value))
    if issubclass(hint, bytes | bytearray):
        try:
            return hint(base64.b64decode(_expect(value, str, where), validate=True))
        except binascii.Error as exc:
            raise ValueError(f"{where}: not base64: {exc}") from None
    if typing.is_typeddict(hint):
        obj = _expect(value, dict, where)
        field_hints = _field_hints(hint)
        return {k: converter.from_json_value(v, field_hints.get(k)) for k, v in obj.items()}
    if issubclass(hint, tuple) and hasattr(hint, "_fields"):  # a NamedTuple: encoded as a JSON array
        items = _expect(value, list, where)
        field_hints = _field_hints(hint)
        return hint(*(converter.from_json_value(v, field_hints.get(name))
                      for v, name in zip(items, hint._fields, strict=False)))
    if dataclasses.is_dataclass(hint):
        obj = _expect(value, dict, where)
        field_hints = _field_hints(hint)
        known = {f.name: f for f in dataclasses.fields(hint) if f.init}
        unknown = set(obj) - set(known)
        if unknown:
            raise TypeError(f"{where}: unexpected fields for {hint.__name__}: {', '.join(sorted(unknown))}")
        kwargs = {name: converter.from_json_value(obj[name], field_hints.get(name)) for name in known if name in obj}
        return hint(**kwargs)
    if isinstance(value, hint):
        return value
    raise TypeError(f"{where}: cannot convert {type(value).__name__} to {hint.__name__} (pass a converter that "
                    "knows this type, for example sessiond_client.contrib.pydantic for pydantic models)")


def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: the fields stay untyped
        return {}


def _convert_union(converter: DefaultPayloadConverter, value: Any, members: tuple[Any, ...], where: str) -> Any:
    if value is None and any(m in _NONE_TYPES for m in members):
        return None
    errors: list[str] = []
    for member in members:
        if member in _NONE_TYPES:
            continue
        try:
            return converter.from_json_value(value, member)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise TypeError(f"{where}: {value!r} fits none of {', '.join(_name(m) for m in members)} ({'; '.join(errors)})")


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{where}: expected a JSON {_JSON_NAMES[kind]}, got {type(value).__name__}")
    return value


_JSON_NAMES: dict[type, str] = {list: "array", dict: "object", str: "string"}


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)


_BINARY_TYPES = (bytes, bytearray, memoryview)


def _encoding(payload: session_pb2.Payload) -> bytes:
    return payload.metadata.get(ENCODING_KEY, b"")


def _is_empty(payload: session_pb2.Payload) -> bool:
    return not payload.data and not payload.metadata
