"""What the core offers operator views: a session page with an extra filter that still scans a
bounded number of sessions, the waiters with the time they started waiting, and activity counts."""

from __future__ import annotations

from sessiond.core.model import Session
from sessiond.core.resources import ResourceVector
from tests.unit.support import QUEUE, connect, create_placed, create_waiting, new_table, options


def test_an_extra_filter_narrows_a_page_and_keeps_the_oldest_first_order() -> None:
    table = new_table()
    connect(table, "w1", 10)
    connect(table, "w2", 10)
    sessions = [create_placed(table, float(i)) for i in range(6)]
    on_w2 = [s for s in sessions if s.worker.key.worker_id == "w2"]

    page, more = table.sessions(where=lambda s: s.worker.key.worker_id == "w2")

    assert page == on_w2
    assert more is None


def test_an_extra_filter_is_asked_about_no_more_sessions_than_max_scan() -> None:
    table = new_table()
    connect(table, "w1", 100)
    sessions = [create_placed(table, float(i)) for i in range(50)]
    asked: list[Session] = []

    def never(session: Session) -> bool:
        asked.append(session)
        return False

    page, more = table.sessions(where=never, max_scan=20)

    assert page == []
    assert asked == sessions[:20]
    assert more == sessions[19].seq, "an empty page still says where to continue"
    rest, _ = table.sessions(after_seq=more, where=lambda s: True, limit=100)
    assert rest == sessions[20:]


def test_waiters_are_listed_oldest_first_with_the_time_they_started_waiting() -> None:
    table = new_table()
    first = create_waiting(table, 1.0)
    second = create_waiting(table, 2.5, task_queue="other")

    assert [(w.waiter_id, w.since, w.task_queue) for w in table.waiters()] == [
        (first.waiter_id, 1.0, QUEUE), (second.waiter_id, 2.5, "other")]

    table.cancel_waiter(3.0, first.waiter_id)
    assert [w.waiter_id for w in table.waiters()] == [second.waiter_id]


def test_a_session_counts_the_activities_it_started() -> None:
    table = new_table()
    connect(table, "w1")
    session = create_placed(table, 0.0, options())

    for i in range(3):
        activity = table.start_activity(float(i), session.session_id, 10.0)
        table.finish_activity(activity.worker.key, activity.epoch, activity.activity_id, session.session_id)

    assert session.activity_count == 3
    assert session.activities == set()


def test_a_resource_vector_reads_as_a_map_of_its_non_zero_amounts() -> None:
    vector = ResourceVector({"sessions": 4, "gpu": 2, "none": 0})

    amounts = vector.as_dict()
    amounts["gpu"] = 99  # a copy: the vector is immutable

    assert vector.as_dict() == {"sessions": 4, "gpu": 2}
    assert ResourceVector().as_dict() == {}
