"""Activity ids: unique, UUID4-shaped, and new for every table (every server start)."""

from __future__ import annotations

import uuid

from sessiond.core.table import ActivityIds, SessionTable
from tests.unit.support import connect, create_placed


def test_activity_ids_are_unique_and_parse_as_version_4_uuids() -> None:
    ids = ActivityIds()
    made = [ids() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    for value in (made[0], made[-1]):
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_two_tables_never_hand_out_the_same_activity_id() -> None:
    first, second = ActivityIds(), ActivityIds()
    assert {first() for _ in range(1000)}.isdisjoint({second() for _ in range(1000)})


def test_a_table_without_an_id_factory_gives_activities_counter_ids_and_sessions_random_ones() -> None:
    table = SessionTable()
    connect(table, "w1", 2)
    session = create_placed(table)
    one = table.start_activity(0.0, session.session_id, 10.0)
    two = table.start_activity(0.0, session.session_id, 10.0)
    assert one.activity_id[:24] == two.activity_id[:24] and one.activity_id != two.activity_id
    assert uuid.UUID(session.session_id).version == 4
    assert session.session_id[:24] != one.activity_id[:24]
