"""The default payload converter: JSON by default, bytes raw, arguments as one payload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sessiond_client import DefaultPayloadConverter, PayloadConverter
from sessiond_client.api.v1 import session_pb2

converter = DefaultPayloadConverter()


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 3.5, "", "héllo ✓", [], [1, "a", None], {"a": {"b": [1, 2]}}],
)
def test_json_values_round_trip(value: Any) -> None:
    payload = converter.to_payload(value)
    assert payload.metadata["encoding"] == b"json/plain"
    assert converter.from_payload(payload) == value


def test_json_is_compact_utf8() -> None:
    payload = converter.to_payload({"k": "é"})
    assert payload.data == '{"k":"é"}'.encode()


@pytest.mark.parametrize("raw", [b"", b"\x00\xffbinary", bytearray(b"ba"), memoryview(b"mv")])
def test_bytes_pass_through_raw(raw: bytes | bytearray | memoryview) -> None:
    payload = converter.to_payload(raw)
    assert payload.metadata["encoding"] == b"binary/plain"
    assert payload.data == bytes(raw)
    assert converter.from_payload(payload) == bytes(raw)


def test_args_are_one_json_array() -> None:
    payload = converter.encode_args([1, "two", {"three": 3}])
    assert payload.metadata["encoding"] == b"json/plain"
    assert json.loads(payload.data) == [1, "two", {"three": 3}]
    assert converter.decode_args(payload) == [1, "two", {"three": 3}]


def test_no_args_are_an_empty_array() -> None:
    payload = converter.encode_args([])
    assert json.loads(payload.data) == []
    assert converter.decode_args(payload) == []


def test_a_single_bytes_argument_travels_raw() -> None:
    payload = converter.encode_args([b"\x01\x02"])
    assert payload.metadata["encoding"] == b"binary/plain"
    assert payload.data == b"\x01\x02"
    assert converter.decode_args(payload) == [b"\x01\x02"]


def test_an_empty_payload_means_no_args_and_none() -> None:
    # What a non-Python caller sends when it sets no input at all.
    assert converter.decode_args(session_pb2.Payload()) == []
    assert converter.from_payload(session_pb2.Payload()) is None


def test_input_that_is_not_a_list_is_rejected() -> None:
    with pytest.raises(TypeError, match="list of arguments"):
        converter.decode_args(converter.to_payload({"not": "a list"}))


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown payload encoding 'xml'"):
        converter.from_payload(session_pb2.Payload(metadata={"encoding": b"xml"}, data=b"<a/>"))


def test_unencodable_values_raise() -> None:
    with pytest.raises(TypeError):
        converter.to_payload(object())
    with pytest.raises(ValueError):
        converter.to_payload(float("nan"))


def test_custom_json_encoder() -> None:
    class SetEncoder(json.JSONEncoder):
        def default(self, o: Any) -> Any:
            return sorted(o) if isinstance(o, set) else super().default(o)

    payload = DefaultPayloadConverter(json_encoder=SetEncoder).to_payload({3, 1})
    assert converter.from_payload(payload) == [1, 3]


def test_converters_are_pluggable() -> None:
    class Upper(PayloadConverter):
        def to_payload(self, value: Any) -> session_pb2.Payload:
            return session_pb2.Payload(metadata={"encoding": b"text/upper"}, data=str(value).upper().encode())

        def from_payload(self, payload: session_pb2.Payload) -> Any:
            return payload.data.decode().lower()

    upper = Upper()
    assert upper.from_payload(upper.to_payload("abc")) == "abc"
    # The base class's argument packing uses the subclass's encoding.
    assert upper.encode_args(["x", "y"]).data == b"['X', 'Y']"
