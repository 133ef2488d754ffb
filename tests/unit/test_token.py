"""Recreate tokens: versioned, stable, checksummed; anything else is InvalidRecreateTokenError."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessiond.core.errors import InvalidRecreateTokenError
from sessiond.core.model import WorkerKey
from sessiond.core.token import decode_token, encode_token

KEY = WorkerKey("fileprocessing", "worker-7")


def _v1(body: bytes) -> bytes:
    """A token with a valid header and checksum around an arbitrary body."""
    return b"sdrt\x01" + zlib.crc32(body).to_bytes(4, "big") + body


def test_token_names_the_worker_it_was_made_for() -> None:
    assert decode_token(encode_token(KEY)) == KEY


def test_token_is_stable_for_the_same_worker() -> None:
    assert encode_token(KEY) == encode_token(WorkerKey("fileprocessing", "worker-7"))


def test_tokens_of_different_workers_differ() -> None:
    assert encode_token(KEY) != encode_token(WorkerKey("fileprocessing", "worker-8"))
    assert encode_token(KEY) != encode_token(WorkerKey("other", "worker-7"))


# Names a server accepts: no control characters, no lone surrogates (not UTF-8).
NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=64)


@given(task_queue=NAMES, worker_id=NAMES)
def test_any_worker_key_survives_a_round_trip(task_queue: str, worker_id: str) -> None:
    key = WorkerKey(task_queue, worker_id)
    assert decode_token(encode_token(key)) == key


def _flip_last_byte(token: bytes) -> bytes:
    return token[:-1] + bytes([token[-1] ^ 0x01])


def _flip_checksum(token: bytes) -> bytes:
    return token[:5] + bytes([token[5] ^ 0xFF]) + token[6:]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"sdrt", id="header-only"),
        pytest.param(b"sdrt\x01\x00\x00\x00", id="truncated-checksum"),
        pytest.param(b"garbage-garbage-garbage", id="garbage"),
        pytest.param(b"SDRT" + encode_token(KEY)[4:], id="wrong-magic"),
        pytest.param(b"sdrt\x02" + encode_token(KEY)[5:], id="unknown-version"),
        pytest.param(b"sdrt\x00" + encode_token(KEY)[5:], id="version-zero"),
        pytest.param(_flip_last_byte(encode_token(KEY)), id="corrupted-body"),
        pytest.param(_flip_checksum(encode_token(KEY)), id="corrupted-checksum"),
        pytest.param(encode_token(KEY)[:-3], id="truncated-body"),
        pytest.param(encode_token(KEY) + b"x", id="trailing-byte"),
        pytest.param(b'{"q":"fileprocessing","w":"worker-7"}', id="bare-json-no-header"),
        pytest.param(b"\x0a\x05hello\x12\x03abc", id="foreign-protobuf-bytes"),
        pytest.param(_v1(b"not json"), id="checksummed-non-json"),
        pytest.param(_v1(b"\xff\xfe\xfd"), id="checksummed-non-utf8"),
        pytest.param(_v1(b"[1, 2]"), id="checksummed-json-list"),
        pytest.param(_v1(b"null"), id="checksummed-json-null"),
        pytest.param(_v1(b'"q"'), id="checksummed-json-string"),
        pytest.param(_v1(b'{"q": "a"}'), id="missing-worker-id"),
        pytest.param(_v1(b'{"w": "a"}'), id="missing-task-queue"),
        pytest.param(_v1(b'{"q": "", "w": "a"}'), id="empty-task-queue"),
        pytest.param(_v1(b'{"q": "a", "w": ""}'), id="empty-worker-id"),
        pytest.param(_v1(b'{"q": 1, "w": "a"}'), id="task-queue-not-a-string"),
        pytest.param(_v1(b'{"q": "a", "w": ["b"]}'), id="worker-id-not-a-string"),
        pytest.param(_v1(b"[" * 100_000 + b"]" * 100_000), id="checksummed-deeply-nested-json"),
        pytest.param(_v1(b'{"q": {"q": ' * 5_000 + b"1" + b"}" * 5_000 + b', "w": "a"}'), id="deeply-nested-object"),
        pytest.param(_v1(b'{"q": ' + b"1" * 5_000 + b', "w": "a"}'), id="huge-integer"),
        pytest.param(_v1(b'{"q": 1e999, "w": "a"}'), id="infinite-float"),
        pytest.param(_v1(b'{"q": NaN, "w": "a"}'), id="nan"),
        pytest.param(_v1(b'{"q": "a\\u0000b", "w": "w"}'), id="nul-in-task-queue"),
        pytest.param(_v1(b'{"q": "a", "w": "w\\nforged log line"}'), id="newline-in-worker-id"),
        pytest.param(_v1(b'{"q": "a", "w": "\\u001b[31m"}'), id="escape-in-worker-id"),
        pytest.param(_v1(b'{"q": "a", "w": "\\ud800"}'), id="lone-surrogate"),
        pytest.param(_v1(b'{"q": "' + b"x" * 300 + b'", "w": "a"}'), id="task-queue-longer-than-a-name"),
    ],
)
def test_anything_but_a_sessiond_token_is_rejected(token: bytes) -> None:
    with pytest.raises(InvalidRecreateTokenError) as caught:
        decode_token(token)
    assert caught.value.reason == "INVALID_RECREATE_TOKEN"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_the_token_error(blob: bytes) -> None:
    try:
        key = decode_token(blob)
    except InvalidRecreateTokenError:
        return
    assert key.task_queue and key.worker_id


@given(st.binary(max_size=200))
def test_arbitrary_checksummed_bodies_decode_or_raise_only_the_token_error(body: bytes) -> None:
    try:
        key = decode_token(_v1(body))
    except InvalidRecreateTokenError:
        return
    data = json.loads(body)
    assert (data["q"], data["w"]) == (key.task_queue, key.worker_id)
