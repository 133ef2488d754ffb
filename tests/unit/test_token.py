"""Recreate tokens and session-record signatures: HMAC-SHA256 with the server's key.

Only what a key holder signed decodes; everything else — forged, truncated, bit-flipped,
re-signed with another key, unsigned version 1 — is InvalidRecreateTokenError.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessiond.core.errors import InvalidRecreateTokenError
from sessiond.core.model import WorkerKey
from sessiond.core.token import Signer, TokenKeys, TokenTarget, canonical

KEY = WorkerKey("fileprocessing", "worker-7")
SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32
SIGNER = Signer(TokenKeys(SECRET))


def signed(body: bytes, secret: bytes = SECRET, version: int = 2) -> bytes:
    """A token with a valid signature around an arbitrary body (what only a key holder can make)."""
    head = b"sdrt" + bytes([version]) + body
    return head + hmac.digest(secret, b"sessiond recreate token v2\x00" + head, hashlib.sha256)


def test_token_names_the_worker_and_its_principal() -> None:
    assert SIGNER.target(SIGNER.token(KEY, "team-a-workers"), 0.0) == TokenTarget(KEY, "team-a-workers")


def test_token_is_stable_and_any_server_with_the_key_reads_it() -> None:
    token = SIGNER.token(KEY, "p")
    assert token == Signer(TokenKeys(SECRET)).token(WorkerKey("fileprocessing", "worker-7"), "p")
    assert Signer(TokenKeys(SECRET)).target(token, 1e9).worker == KEY


def test_tokens_of_different_workers_or_principals_differ() -> None:
    token = SIGNER.token(KEY, "p")
    assert token != SIGNER.token(WorkerKey("fileprocessing", "worker-8"), "p")
    assert token != SIGNER.token(WorkerKey("other", "worker-7"), "p")
    assert token != SIGNER.token(KEY, "q")


# Names a server accepts: no control characters, no lone surrogates (not UTF-8).
NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=64)


@given(task_queue=NAMES, worker_id=NAMES, principal=NAMES | st.just(""))
def test_any_worker_key_survives_a_round_trip(task_queue: str, worker_id: str, principal: str) -> None:
    key = WorkerKey(task_queue, worker_id)
    assert SIGNER.target(SIGNER.token(key, principal), 0.0) == TokenTarget(key, principal)


GOOD = SIGNER.token(KEY, "workers")


@pytest.mark.parametrize("position", range(len(GOOD)))
def test_every_flipped_bit_is_refused(position: int) -> None:
    for bit in (0x01, 0x80):
        flipped = GOOD[:position] + bytes([GOOD[position] ^ bit]) + GOOD[position + 1:]
        with pytest.raises(InvalidRecreateTokenError):
            SIGNER.target(flipped, 0.0)


@pytest.mark.parametrize("length", range(len(GOOD)))
def test_every_truncation_is_refused(length: int) -> None:
    with pytest.raises(InvalidRecreateTokenError):
        SIGNER.target(GOOD[:length], 0.0)


def test_a_token_signed_with_another_key_is_refused() -> None:
    resigned = Signer(TokenKeys(OTHER_SECRET)).token(KEY, "workers")
    with pytest.raises(InvalidRecreateTokenError, match="bad signature"):
        SIGNER.target(resigned, 0.0)


def test_a_forged_token_naming_any_worker_is_refused() -> None:
    body = json.dumps({"q": "fileprocessing", "w": "victim", "p": "workers"}).encode()
    with pytest.raises(InvalidRecreateTokenError, match="bad signature"):
        SIGNER.target(b"sdrt\x02" + body + b"\x00" * 32, 0.0)


def test_unsigned_version_1_tokens_are_refused_with_a_way_out() -> None:
    body = b'{"q":"fileprocessing","w":"worker-7"}'
    v1 = b"sdrt\x01" + zlib.crc32(body).to_bytes(4, "big") + body
    with pytest.raises(InvalidRecreateTokenError, match=r"version 1.*GetSessionInfo"):
        SIGNER.target(v1, 0.0)


def test_the_previous_key_verifies_until_its_period_ends_and_never_signs() -> None:
    old_token = Signer(TokenKeys(OTHER_SECRET)).token(KEY, "p")
    rotated = Signer(TokenKeys(SECRET, previous=OTHER_SECRET, previous_until=100.0))
    assert rotated.target(old_token, 99.9).worker == KEY
    with pytest.raises(InvalidRecreateTokenError):
        rotated.target(old_token, 100.0)  # exactly at the end counts as ended
    assert rotated.token(KEY, "p") == SIGNER.token(KEY, "p")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"sdrt", id="header-only"),
        pytest.param(b"garbage-garbage-garbage", id="garbage"),
        pytest.param(b"SDRT" + GOOD[4:], id="wrong-magic"),
        pytest.param(b"sdrt\x03" + GOOD[5:], id="unknown-version"),
        pytest.param(b"sdrt\x00" + GOOD[5:], id="version-zero"),
        pytest.param(GOOD + b"x", id="trailing-byte"),
        pytest.param(b'{"q":"fileprocessing","w":"worker-7"}', id="bare-json-no-header"),
        pytest.param(b"\x0a\x05hello\x12\x03abc", id="foreign-protobuf-bytes"),
        # Signed bodies that are not what this server writes (only a leaked key could make them).
        pytest.param(signed(b"not json"), id="signed-non-json"),
        pytest.param(signed(b"\xff\xfe\xfd"), id="signed-non-utf8"),
        pytest.param(signed(b"[1, 2]"), id="signed-json-list"),
        pytest.param(signed(b"null"), id="signed-json-null"),
        pytest.param(signed(b'{"q": "a", "w": "b"}'), id="missing-principal"),
        pytest.param(signed(b'{"q": "", "w": "a", "p": ""}'), id="empty-task-queue"),
        pytest.param(signed(b'{"q": "a", "w": "", "p": ""}'), id="empty-worker-id"),
        pytest.param(signed(b'{"q": 1, "w": "a", "p": ""}'), id="task-queue-not-a-string"),
        pytest.param(signed(b'{"q": "a", "w": "b", "p": 7}'), id="principal-not-a-string"),
        pytest.param(signed(b"[" * 100_000 + b"]" * 100_000), id="signed-deeply-nested-json"),
        pytest.param(signed(b'{"q": ' + b"1" * 5_000 + b', "w": "a", "p": ""}'), id="huge-integer"),
        pytest.param(signed(b'{"q": "a\\u0000b", "w": "w", "p": ""}'), id="nul-in-task-queue"),
        pytest.param(signed(b'{"q": "a", "w": "w\\nforged log line", "p": ""}'), id="newline-in-worker-id"),
        pytest.param(signed(b'{"q": "a", "w": "w", "p": "\\u001b[31m"}'), id="escape-in-principal"),
        pytest.param(signed(b'{"q": "a", "w": "\\ud800", "p": ""}'), id="lone-surrogate"),
        pytest.param(signed(b'{"q": "' + b"x" * 300 + b'", "w": "a", "p": ""}'), id="name-longer-than-a-name"),
    ],
)
def test_anything_but_a_token_this_server_signed_is_rejected(token: bytes) -> None:
    with pytest.raises(InvalidRecreateTokenError) as caught:
        SIGNER.target(token, 0.0)
    assert caught.value.reason == "INVALID_RECREATE_TOKEN"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_the_token_error(blob: bytes) -> None:
    with pytest.raises(InvalidRecreateTokenError):
        SIGNER.target(blob, 0.0)  # a 2^-256 chance of a valid MAC aside, nothing unsigned decodes


@given(st.binary(max_size=200))
def test_arbitrary_signed_bodies_decode_or_raise_only_the_token_error(body: bytes) -> None:
    try:
        target = SIGNER.target(signed(body), 0.0)
    except InvalidRecreateTokenError:
        return
    data = json.loads(body)
    assert (data["q"], data["w"], data["p"]) == (target.worker.task_queue, target.worker.worker_id, target.principal)


# ----------------------------------------------------------------------------- session records

RECORD = ("session-1", "q", "worker-7", "workers", "team-a", "owner", "req-1", 0, 1700000000, 5)


def test_a_record_signature_verifies_and_any_changed_field_does_not() -> None:
    signature = SIGNER.record_signature(RECORD)
    assert SIGNER.record_valid(RECORD, signature, 0.0)
    for index in range(len(RECORD)):
        changed = list(RECORD)
        changed[index] = changed[index] + 1 if isinstance(changed[index], int) else changed[index] + "x"
        assert not SIGNER.record_valid(changed, signature, 0.0), index


def test_a_record_signed_with_another_key_or_truncated_is_invalid() -> None:
    assert not SIGNER.record_valid(RECORD, Signer(TokenKeys(OTHER_SECRET)).record_signature(RECORD), 0.0)
    assert not SIGNER.record_valid(RECORD, SIGNER.record_signature(RECORD)[:-1], 0.0)
    assert not SIGNER.record_valid(RECORD, b"", 0.0)


def test_a_token_signature_is_not_a_record_signature() -> None:
    """Domain separation: nothing signed as a token can pass as a record, or the other way round."""
    token = SIGNER.token(KEY, "p")
    parts = (token[:-32].decode(),)
    assert not SIGNER.record_valid(parts, token[-32:], 0.0)


def test_records_verify_with_the_previous_key_within_its_period() -> None:
    old = Signer(TokenKeys(OTHER_SECRET)).record_signature(RECORD)
    rotated = Signer(TokenKeys(SECRET, previous=OTHER_SECRET, previous_until=10.0))
    assert rotated.record_valid(RECORD, old, 5.0)
    assert not rotated.record_valid(RECORD, old, 10.0)


PARTS = st.lists(st.text() | st.integers() | st.binary(), max_size=6)


@given(PARTS, PARTS)
def test_the_canonical_encoding_never_confuses_two_records(a: list[str | int | bytes],
                                                           b: list[str | int | bytes]) -> None:
    if a != b:
        assert canonical(a) != canonical(b)
