"""ResourceVector: named amounts, missing names are zero, ``covers`` is the placement test."""

from __future__ import annotations

import pytest

from sessiond.core.resources import SESSIONS, ResourceVector


def test_missing_names_read_as_zero_and_zero_amounts_are_dropped() -> None:
    vector = ResourceVector({"gpu": 0, SESSIONS: 2})
    assert vector["gpu"] == 0
    assert vector["anything"] == 0
    assert vector == ResourceVector.sessions(2)


def test_one_session_demands_one_session_slot() -> None:
    assert ResourceVector.one_session() == ResourceVector({SESSIONS: 1})
    assert ResourceVector.one_session()[SESSIONS] == 1


def test_add_and_subtract_are_per_name() -> None:
    a = ResourceVector({SESSIONS: 3, "gpu": 1})
    b = ResourceVector({SESSIONS: 1, "disk": 5})
    assert a + b == ResourceVector({SESSIONS: 4, "gpu": 1, "disk": 5})
    assert a - ResourceVector({SESSIONS: 1}) == ResourceVector({SESSIONS: 2, "gpu": 1})


def test_subtracting_everything_gives_the_empty_vector() -> None:
    capacity = ResourceVector.sessions(2)
    used = ResourceVector.one_session() + ResourceVector.one_session()
    assert capacity - used == ResourceVector()
    assert (capacity - used)[SESSIONS] == 0


@pytest.mark.parametrize(
    ("free", "demand", "fits"),
    [
        pytest.param({SESSIONS: 1}, {SESSIONS: 1}, True, id="exact-fit"),
        pytest.param({SESSIONS: 2}, {SESSIONS: 1}, True, id="room-to-spare"),
        pytest.param({}, {SESSIONS: 1}, False, id="full"),
        pytest.param({SESSIONS: -1}, {SESSIONS: 1}, False, id="overdrawn"),
        pytest.param({SESSIONS: 1}, {}, True, id="empty-demand"),
        pytest.param({SESSIONS: 5, "gpu": 1}, {SESSIONS: 1, "gpu": 2}, False, id="one-resource-short"),
        pytest.param({SESSIONS: 5, "gpu": 2}, {SESSIONS: 1, "gpu": 2}, True, id="every-resource-fits"),
        pytest.param({SESSIONS: 5}, {"gpu": 1}, False, id="undeclared-resource"),
    ],
)
def test_covers_requires_every_demanded_amount(free: dict[str, int], demand: dict[str, int], fits: bool) -> None:
    assert ResourceVector(free).covers(ResourceVector(demand)) is fits


def test_equal_vectors_hash_equal_and_differ_from_other_types() -> None:
    assert hash(ResourceVector({SESSIONS: 2, "gpu": 0})) == hash(ResourceVector.sessions(2))
    assert ResourceVector.sessions(2) != {SESSIONS: 2}
    assert "sessions" in repr(ResourceVector.sessions(2))


def test_vectors_are_not_changed_by_arithmetic() -> None:
    a = ResourceVector.sessions(2)
    _ = a + ResourceVector.one_session()
    _ = a - ResourceVector.one_session()
    assert a == ResourceVector.sessions(2)
