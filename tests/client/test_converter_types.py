"""The default converter beyond JSON: dataclasses, datetime/date/time, UUID, Enum, Decimal, bytes inside
structures, and decoding guided by type hints (arguments by parameter hints, results by return hints)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypedDict

import pytest
from sessiond_client import DefaultPayloadConverter
from sessiond_client._typehints import activity_hints

converter = DefaultPayloadConverter()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Chunk:
    offset: int
    data: bytes


@dataclass
class Job:
    id: uuid.UUID
    due: dt.datetime
    day: dt.date
    color: Color
    level: Level
    chunks: list[Chunk]
    tags: set[str] = field(default_factory=set)
    price: Decimal = Decimal("0")
    note: str | None = None
    at: dt.time | None = None
    extra: dict[str, tuple[int, str]] = field(default_factory=dict)


JOB = Job(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    due=dt.datetime(2026, 11, 30, 12, 0, 30, 500, tzinfo=dt.UTC),
    day=dt.date(2026, 12, 1),
    color=Color.BLUE,
    level=Level.HIGH,
    chunks=[Chunk(0, b"\x00\xff"), Chunk(2, b"ab")],
    tags={"b", "a"},
    price=Decimal("12.50"),
    at=dt.time(8, 30),
    extra={"k": (1, "one")},
)


def test_a_nested_dataclass_round_trips_exactly_by_its_type_hint() -> None:
    payload = converter.to_payload(JOB)
    assert converter.from_payload(payload, Job) == JOB


def test_without_a_hint_the_value_decodes_to_plain_json() -> None:
    decoded = converter.from_payload(converter.to_payload(JOB))
    assert decoded["id"] == "12345678-1234-5678-1234-567812345678"
    assert decoded["due"] == "2026-11-30T12:00:30.000500+00:00"
    assert decoded["day"] == "2026-12-01"
    assert (decoded["color"], decoded["level"], decoded["price"]) == ("blue", 2, "12.50")
    assert decoded["chunks"][0] == {"offset": 0, "data": "AP8="}  # bytes inside JSON: base64
    assert decoded["tags"] == ["a", "b"]  # sets are sorted lists


@pytest.mark.parametrize(("value", "hint"), [
    (dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime),
    (dt.date(2026, 1, 2), dt.date),
    (uuid.uuid4(), uuid.UUID),
    (Color.RED, Color),
    (Level.LOW, Level),
    (Decimal("1.10"), Decimal),
    (dt.timedelta(seconds=90.5), dt.timedelta),
    ([Color.RED, Color.BLUE], list[Color]),
    ((1, "a", 2.5), tuple[int, str, float]),
    ((1, 2, 3), tuple[int, ...]),
    (frozenset({1, 2}), frozenset[int]),
    ({"a": dt.date(2026, 1, 1)}, dict[str, dt.date]),
    (None, int | None),
    (3, int | None),
    ("x", Literal["x", "y"]),
    ({"any": [1, "thing"]}, Any),
])
def test_values_round_trip_by_their_hints(value: Any, hint: Any) -> None:
    assert converter.from_payload(converter.to_payload(value), hint) == value


class Point(NamedTuple):
    x: int
    when: dt.date


class Movie(TypedDict):
    title: str
    released: dt.date


def test_named_tuples_and_typed_dicts_decode_by_their_field_hints() -> None:
    point = Point(1, dt.date(2026, 1, 1))
    assert converter.from_payload(converter.to_payload(point), Point) == point
    movie: Movie = {"title": "x", "released": dt.date(2026, 2, 2)}
    assert converter.from_payload(converter.to_payload(movie), Movie) == movie


def test_top_level_bytes_stay_raw() -> None:
    payload = converter.to_payload(b"\x00raw")
    assert payload.metadata["encoding"] == b"binary/plain"
    assert converter.from_payload(payload, bytes) == b"\x00raw"


@pytest.mark.parametrize(("value", "hint", "message"), [
    ("x", int, "expected int, got str"),
    (True, int, "expected int, got a boolean"),
    ({"offset": 1, "data": "AA==", "bogus": 1}, Chunk, "unexpected fields for Chunk: bogus"),
    ({"offset": 1}, Chunk, "missing"),
    ([1, 2], tuple[int, int, int], "expected 3 items, got 2"),
    ("z", Literal["x", "y"], "expected one of"),
    ("not base64!", bytes, "not base64"),
    (None, int, "expected int, got null"),
    ("purple", Color, "is not a valid Color"),
])
def test_a_value_that_does_not_fit_its_hint_is_a_clear_error(value: Any, hint: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        converter.from_json_value(value, hint)


def test_an_argument_that_does_not_fit_its_parameter_is_named_by_position() -> None:
    payload = converter.encode_args([1, "not a date"])
    with pytest.raises(ValueError, match=r"^argument 2: Invalid isoformat string"):
        converter.decode_args(payload, (int, dt.date))


def test_an_unencodable_value_names_its_type() -> None:
    with pytest.raises(TypeError, match="cannot encode a object as JSON"):
        converter.to_payload(object())


def test_arguments_decode_by_parameter_hints_and_extra_ones_stay_untyped() -> None:
    def activity(job: Job, when: dt.date, *rest: Any) -> Chunk:
        raise NotImplementedError

    hints = activity_hints(activity)
    assert hints.params == (Job, dt.date)
    assert hints.result is Chunk
    payload = converter.encode_args([JOB, dt.date(2026, 1, 1), dt.date(2026, 1, 2)])
    assert converter.decode_args(payload, hints.params) == [JOB, dt.date(2026, 1, 1), "2026-01-02"]


def test_hints_of_async_functions_callable_objects_and_unresolvable_annotations() -> None:
    async def fetch(url: str) -> bytes:
        raise NotImplementedError

    class Resize:
        def __call__(self, width: int, height: int) -> tuple[int, int]:
            return width, height

    def broken(x: DoesNotExist) -> None:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    assert activity_hints(fetch).params == (str,) and activity_hints(fetch).result is bytes
    assert activity_hints(Resize()).params == (int, int)
    assert activity_hints(broken).params is None  # unannotated, rather than a crash
