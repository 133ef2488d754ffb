"""Seeded generators of hostile wire requests, for every RPC the server answers.

Everything is bytes: a case is sent through a channel's ``unary_unary``/``unary_stream``/
``stream_stream`` with identity serializers, so nothing on the client side validates or re-encodes
it. One ``random.Random(seed)`` drives every choice, so a seed reproduces its cases exactly (the
server's answers to them can still interleave differently). The kinds of case:

=================  ==============================================================================
``random``         random bytes (empty, short, up to 4 KiB)
``mutated``        a valid request with bits flipped, bytes inserted/deleted/duplicated, truncated
``bad-utf8``       a valid request plus a string field (maybe nested) holding invalid UTF-8
``wrong-type``     a valid message of another type (another RPC's request, a response)
``structured``     a message built field by field from the descriptor with hostile values: extreme
                   durations and integers, unknown enums, NaN, huge and control-character strings,
                   forged recreate tokens and page tokens, ids and tokens of real sessions
``edge``           a valid request with one or two fields (maybe nested) given such a value, so the
                   rest of it passes validation and the value reaches deeper code
=================  ==============================================================================
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

KINDS = ("random", "mutated", "bad-utf8", "wrong-type", "structured", "edge")
FUZZ_QUEUE = "fuzz"


def _methods() -> dict[str, MethodDescriptor]:
    services = [
        session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    return {f"/{service.full_name}/{method.name}": method for service in services for method in service.methods}


# Every method the server serves, by path.
METHODS: dict[str, MethodDescriptor] = _methods()


def short_name(path: str) -> str:
    """``/sessiond.v1.SessionService/CreateSession`` -> ``CreateSession`` (``Health/Check`` for others)."""
    service, method = path.strip("/").split("/")
    return method if service.startswith("sessiond.") else f"{service.rsplit('.', 1)[-1]}/{method}"


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of a message descriptor."""
    return message_factory.GetMessageClass(descriptor)


@dataclass
class Seeds:
    """Real values from the running server, so cases reach deep code paths, not only validation."""

    session_ids: list[str] = field(default_factory=list)
    recreate_tokens: list[bytes] = field(default_factory=list)
    worker_ids: list[str] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)
    activity_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- values

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_DURATION_SECONDS = [0, 1, -1, 59, 366 * 86400, 366 * 86400 + 1, 315_576_000_000, 315_576_000_001, 10**15,
                     2**63 - 1, -(2**63)]
_NANOS = [0, 1, -1, 500_000_000, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31)]
_CONTROL = ["\x00", "\n", "\r", "\t", "\x1b[31m", "\x1b[2K\r", "\x7f", "\x85", "\u2028", "\u2029", "\x08", "\x0c"]
_ODD = ["\u00b2", "\u2460", "\u0661", "\u202e", "\ufeff", "\u200b", "\U0001f600", "\u00e9", "\uffff", "\U0010ffff"]
_STRINGS = ["", "fuzz", FUZZ_QUEUE, "q", "default", "q" * 256, "q" * 257, "\u00e9" * 128, "\u00e9" * 129,
            "x" * 65_536, "-1", "0", "9" * 20, "9" * 21, "18446744073709551615", "null", "{}", "[]", "%s%n",
            "../../etc/passwd", "' OR 1=1 --", "Bearer x",
            # Resource names, labels and selectors (SPEC §6.3): valid ones, and near misses.
            "gpu", "sessions", "zone", "a", "zone=a", "zone in (a,b)", "zone in ()", "zone in (a,", "zone!=a",
            "!zone", "zone==a", "zone=a,zone=b", "zone=a," * 40, "k" * 63, "k" * 64, "in in (in)",
            "(" * 500, ",".join(f"k{i}" for i in range(40)), "zone in (" + ",".join("v" * 5 for _ in range(40)) + ")"]
_EVIL_JSON = [b"[" * 5_000, b'{"q":' * 3_000, b"1" * 5_000, b"1e999", b"NaN", b'"\\ud800"', b'{"q": null, "w": 1}',
              b'{"q": "fuzz", "w": "\\u0000"}', b'{"q": "' + b"x" * 300 + b'", "w": "w"}', b"\xff\xfe", b"[]",
              b'["fuzz"]', b'["fuzz", "w", "x"]', b'{"q": "fuzz", "w": "w"}', b'{"q": "a\\nb", "w": "w"}']


def _text(rng: random.Random, seeds: Seeds) -> str:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(_STRINGS)
    if roll < 0.45:
        base = rng.choice(["fuzz", "w", "", rng.choice(seeds.session_ids or ["s"])])
        return base + rng.choice(_CONTROL + _ODD) + rng.choice(["", "x", "\u00e9"])
    if roll < 0.65 and (seeds.session_ids or seeds.worker_ids):
        return rng.choice(seeds.session_ids + seeds.worker_ids)
    if roll < 0.75:
        return _page_token(rng, seeds)
    # Random code points, surrogates excluded (a Python str with one cannot be serialised at all).
    return "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0, 0xD800),
                                   rng.randrange(0xE000, 0x110000)])) for _ in range(rng.randrange(1, 40)))


def _page_token(rng: random.Random, seeds: Seeds) -> str:
    choices: list[Callable[[], str]] = [
        lambda: rng.choice(["\u00b2", "\u2460", "\u0661\u0662", "12\u00b3", "-0", "00", "9" * 20, "9" * 400]),
        lambda: str(rng.randrange(-(2**70), 2**70)),
        lambda: base64.urlsafe_b64encode(rng.choice(_EVIL_JSON)).decode(),
        lambda: base64.urlsafe_b64encode(json.dumps([_short(rng), _short(rng)]).encode()).decode(),
        lambda: base64.b64encode(rng.randbytes(rng.randrange(0, 64))).decode(),
        lambda: rng.choice(seeds.page_tokens or [""]) + rng.choice(["", "=", "A", "\u00e9", "%"]),
    ]
    return rng.choice(choices)()


def _short(rng: random.Random) -> str:
    return rng.choice(["fuzz", "w", "", "a\x00b", "\u00e9", "x" * 300])


def forged_token(rng: random.Random, body: bytes | None = None) -> bytes:
    """A recreate token with the right magic, version and checksum around a hostile body."""
    body = rng.choice(_EVIL_JSON) if body is None else body
    version = rng.choice([b"\x01", b"\x01", b"\x02", b"\x00"])
    return b"sdrt" + version + zlib.crc32(body).to_bytes(4, "big") + body


def _bytes(rng: random.Random, seeds: Seeds) -> bytes:
    roll = rng.random()
    if roll < 0.3:
        return forged_token(rng)
    if roll < 0.45 and seeds.recreate_tokens:
        return mutate(rng, rng.choice(seeds.recreate_tokens))
    if roll < 0.55 and seeds.recreate_tokens:
        return rng.choice(seeds.recreate_tokens)
    if roll < 0.6:
        return b"x" * rng.choice([4096, 4097, 65_536])
    return rng.randbytes(rng.randrange(0, 64))


def _scalar(rng: random.Random, fd: FieldDescriptor, seeds: Seeds) -> object:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _text(rng, seeds)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _bytes(rng, seeds)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), -float("inf"), 3.4e38, -1e-300])
    low, high = _INT_RANGES[fd.type]
    if fd.type == FieldDescriptor.TYPE_ENUM and rng.random() < 0.5:
        return rng.choice([value.number for value in fd.enum_type.values])
    return rng.choice([0, 1, -1 if low < 0 else 2, low, high, rng.randrange(low, high + 1), 1000, 1001, 1_000_001])


def _fill_duration(message: Message, rng: random.Random) -> None:
    message.seconds = rng.choice([*_DURATION_SECONDS, rng.randrange(0, 100)])  # type: ignore[attr-defined]
    message.nanos = rng.choice(_NANOS)  # type: ignore[attr-defined]


def build(rng: random.Random, descriptor: Descriptor, seeds: Seeds, depth: int = 0) -> Message:
    """A message of ``descriptor`` with a random subset of fields set to hostile values."""
    message = message_class(descriptor)()
    if descriptor.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        _fill_duration(message, rng)
        return message
    fields = list(descriptor.fields)
    if descriptor.oneofs and rng.random() < 0.8:  # mostly one arm of a oneof, as a real peer sends
        arm = rng.choice(descriptor.oneofs[0].fields)
        fields = [f for f in fields if f.containing_oneof is None or f is arm]
    for fd in fields:
        if rng.random() < 0.35 and fd.containing_oneof is None:
            continue
        _set(rng, message, fd, seeds, depth)
    return message


def _set(rng: random.Random, message: Message, fd: FieldDescriptor, seeds: Seeds, depth: int) -> None:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        target = getattr(message, fd.name)
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        for _ in range(rng.randrange(0, 4)):
            key = _scalar(rng, key_fd, seeds)
            if value_fd.message_type is None:
                target[key] = _scalar(rng, value_fd, seeds)
            elif depth < 3:
                target[key].CopyFrom(build(rng, value_fd.message_type, seeds, depth + 1))
        return
    repeated = fd.is_repeated
    for _ in range(rng.randrange(1, 4) if repeated else 1):
        if fd.message_type is not None:
            if depth >= 3:
                return
            value = build(rng, fd.message_type, seeds, depth + 1)
            if repeated:
                getattr(message, fd.name).add().CopyFrom(value)
            else:
                getattr(message, fd.name).CopyFrom(value)
        else:
            value = _scalar(rng, fd, seeds)
            if fd.enum_type is not None and fd.enum_type.is_closed:  # proto2: unknown values cannot be set
                value = rng.choice(fd.enum_type.values).number
            if repeated:
                getattr(message, fd.name).append(value)
            else:
                setattr(message, fd.name, value)


# ----------------------------------------------------------------------------- bytes-level kinds


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xed\xa0\x80", b"\xc0\xaf",
             b"\xf8\x88\x80\x80\x80", b"ok\x80", b"\xf4\x90\x80\x80"]


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[int]]:
    paths: list[list[int]] = []
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_STRING:
            paths.append([fd.number])
        elif fd.message_type is not None and depth < 2:
            paths.extend([fd.number, *rest] for rest in _string_paths(fd.message_type, depth + 1))
    return paths


def bad_utf8(rng: random.Random, descriptor: Descriptor, valid: bytes) -> bytes:
    """``valid`` plus a string field (maybe inside a sub-message) holding invalid UTF-8."""
    paths = _string_paths(descriptor)
    if not paths:
        return valid + _length_delimited(1, rng.choice(_BAD_UTF8))
    path = rng.choice(paths)
    payload = rng.choice(["", "fuzz"]).encode() + rng.choice(_BAD_UTF8)
    for number in reversed(path):
        payload = _length_delimited(number, payload)
    return valid + payload if rng.random() < 0.7 else payload + valid


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 random byte-level edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip a bit
            index = rng.randrange(len(out))
            out[index] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # replace a byte
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            out[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 3 and out:  # delete a range
            out[at:at + rng.randrange(1, 9)] = b""
        elif op == 4:  # truncate
            del out[at:]
        elif op == 5 and out:  # duplicate a range
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randrange(1, 17)]
        else:  # a varint that never ends, or a huge length prefix
            out[at:at] = rng.choice([b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08\x80", b"\x0b", b"\x0c"])
    return bytes(out)


_ALL_TYPES: list[Descriptor] = [
    *(method.input_type for method in METHODS.values()),
    *(method.output_type for method in METHODS.values()),
    session_pb2.Session.DESCRIPTOR, worker_pb2.RegisterWorker.DESCRIPTOR, descriptor_pb2.FileDescriptorProto.DESCRIPTOR,
]


def valid_examples(descriptor: Descriptor, seeds: Seeds) -> list[bytes]:
    """Requests a well-behaved peer could send (the starting point of mutations)."""
    name = descriptor.full_name
    session_id = seeds.session_ids[0] if seeds.session_ids else "s"
    token = seeds.recreate_tokens[0] if seeds.recreate_tokens else b""
    options = session_pb2.SessionOptions()
    options.creation_timeout.FromSeconds(0)
    asks = session_pb2.SessionOptions(resources={"gpu": 1, "scratch_gb": 10}, selector="zone in (a,b), ssd")
    asks.creation_timeout.FromSeconds(0)
    messages: dict[str, list[Message]] = {
        "sessiond.v1.CreateSessionRequest": [
            session_service_pb2.CreateSessionRequest(task_queue=FUZZ_QUEUE, options=options, owner="o", request_id="r"),
            session_service_pb2.CreateSessionRequest(task_queue=FUZZ_QUEUE),
            session_service_pb2.CreateSessionRequest(task_queue=FUZZ_QUEUE, options=asks)],
        "sessiond.v1.RecreateSessionRequest": [
            session_service_pb2.RecreateSessionRequest(recreate_token=token, options=options, request_id="r"),
            session_service_pb2.RecreateSessionRequest(recreate_token=token, options=session_pb2.SessionOptions(
                resources={"gpu": 1}, creation_timeout=options.creation_timeout))],
        "sessiond.v1.CompleteSessionRequest": [session_service_pb2.CompleteSessionRequest(session_id=session_id)],
        "sessiond.v1.GetSessionInfoRequest": [session_service_pb2.GetSessionInfoRequest(session_id=session_id)],
        "sessiond.v1.ExecuteActivityRequest": [session_service_pb2.ExecuteActivityRequest(
            session_id=session_id, activity_type="echo", headers={"traceparent": "00-x"},
            input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=b'"hi"'))],
        "sessiond.v1.WatchSessionRequest": [session_service_pb2.WatchSessionRequest(session_id=session_id)],
        "sessiond.v1.ListSessionsRequest": [session_service_pb2.ListSessionsRequest(
            task_queue=FUZZ_QUEUE, state=session_pb2.SESSION_STATE_OPEN, page_size=2, resource="gpu",
            page_token=seeds.page_tokens[0] if seeds.page_tokens else "")],
        "sessiond.v1.ListWorkersRequest": [session_service_pb2.ListWorkersRequest(task_queue=FUZZ_QUEUE, page_size=1)],
        "sessiond.v1.WorkerHeartbeatRequest": [
            worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
                task_queue=FUZZ_QUEUE, worker_id="fz", identity="i", host_name="h", max_concurrent_sessions=3)),
            worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
                task_queue=FUZZ_QUEUE, worker_id="fz-gpu", max_concurrent_sessions=3,
                capacities={"gpu": 2, "sessions": 3}, labels={"zone": "a", "ssd": "yes"})),
            worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()),
            worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
                activity_id=seeds.activity_ids[0] if seeds.activity_ids else "a", session_id=session_id)),
            worker_pb2.WorkerHeartbeatRequest(goodbye=worker_pb2.Goodbye(drain=True))],
        "grpc.health.v1.HealthCheckRequest": [health_pb2.HealthCheckRequest(service="sessiond.v1.SessionService")],
        "grpc.reflection.v1alpha.ServerReflectionRequest": [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="sessiond.v1.SessionService")],
    }
    return [m.SerializePartialToString() for m in messages.get(name, [message_class(descriptor)()])]


def edge(rng: random.Random, descriptor: Descriptor, seeds: Seeds) -> bytes:
    """A valid example with one or two fields, maybe nested, set to a hostile value."""
    message = message_class(descriptor).FromString(rng.choice(valid_examples(descriptor, seeds)))
    if not descriptor.fields:
        return message.SerializePartialToString()
    for _ in range(rng.randrange(1, 3)):
        target, target_descriptor = message, descriptor
        while True:
            fd = rng.choice(target_descriptor.fields)
            nested = fd.message_type
            if nested is None or not nested.fields or nested.GetOptions().map_entry or fd.is_repeated \
                    or rng.random() < 0.3 \
                    or nested.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
                break
            target, target_descriptor = getattr(target, fd.name), nested
        target.ClearField(fd.name)
        _set(rng, target, fd, seeds, depth=1)
    return message.SerializePartialToString()


def one_message(rng: random.Random, descriptor: Descriptor, seeds: Seeds, kind: str) -> bytes:
    """One request body of the given kind."""
    if kind == "edge":
        return edge(rng, descriptor, seeds)
    if kind == "random":
        return rng.randbytes(rng.choice([0, 1, 2, 3, rng.randrange(4, 64), rng.randrange(64, 4096)]))
    if kind == "mutated":
        return mutate(rng, rng.choice(valid_examples(descriptor, seeds)))
    if kind == "bad-utf8":
        built = build(rng, descriptor, seeds).SerializePartialToString()
        base = rng.choice([*valid_examples(descriptor, seeds), built])
        return bad_utf8(rng, descriptor, base)
    if kind == "wrong-type":
        other = rng.choice([d for d in _ALL_TYPES if d is not descriptor])
        return build(rng, other, seeds).SerializePartialToString()
    return build(rng, descriptor, seeds).SerializePartialToString()


@dataclass(frozen=True)
class Case:
    """One call: its method path, kind, and the request message(s) as bytes."""

    path: str
    kind: str
    messages: tuple[bytes, ...]


def make_case(rng: random.Random, path: str, seeds: Seeds) -> Case:
    """A case for ``path``: one message, or for a client stream a first message and a few more."""
    method = METHODS[path]
    kind = rng.choice(KINDS)
    if not method.client_streaming:
        return Case(path, kind, (one_message(rng, method.input_type, seeds, kind),))
    if path.endswith("/WorkerHeartbeat") and rng.random() < 0.6:
        # Mostly a proper register first, so the hostile part reaches a registered stream.
        register = build(rng, worker_pb2.RegisterWorker.DESCRIPTOR, seeds)
        first = valid_examples(method.input_type, seeds)[0] if rng.random() < 0.5 else \
            worker_pb2.WorkerHeartbeatRequest(register=register).SerializePartialToString()  # type: ignore[arg-type]
    else:
        first = one_message(rng, method.input_type, seeds, kind)
    rest = tuple(one_message(rng, method.input_type, seeds, rng.choice(KINDS)) for _ in range(rng.randrange(0, 5)))
    return Case(path, kind, (first, *rest))
