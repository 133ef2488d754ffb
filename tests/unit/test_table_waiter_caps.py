"""Waiting creates are bounded: a global cap and a per-queue cap, TOO_MANY_WAITERS beyond them."""

from __future__ import annotations

import pytest

from sessiond.core.errors import TooManyWaitersError
from sessiond.core.events import SessionPlaced
from sessiond.core.model import Waiter
from sessiond.core.table import SessionTable
from tests.unit.support import connect, counting_ids, create_placed, create_waiting, of_type, options


def _table(max_waiters: int | None = None, per_queue: int | None = None) -> SessionTable:
    return SessionTable(new_id=counting_ids(), max_waiters=max_waiters, max_waiters_per_queue=per_queue)


def test_the_per_queue_cap_refuses_one_more_waiter_on_that_queue_only() -> None:
    table = _table(per_queue=2)
    create_waiting(table, 0.0, task_queue="a")
    create_waiting(table, 0.0, task_queue="a")

    with pytest.raises(TooManyWaitersError) as caught:
        table.create(0.0, "a", options())

    assert caught.value.reason == "TOO_MANY_WAITERS"
    assert caught.value.metadata == {"task_queue": "a", "limit": "2"}
    create_waiting(table, 0.0, task_queue="b")  # another queue has its own room
    assert table.waiting_count() == 3


def test_the_global_cap_counts_every_queue_and_recreates() -> None:
    table = _table(max_waiters=3)
    worker = connect(table, "w", 1)
    held = create_placed(table, 0.0)
    token = table.recreate_token(held)
    create_waiting(table, 0.0, task_queue="a")
    create_waiting(table, 0.0, task_queue="b")
    assert isinstance(table.recreate(0.0, token, options()), Waiter)  # the worker is full: waits

    with pytest.raises(TooManyWaitersError) as caught:
        table.create(0.0, "c", options())
    with pytest.raises(TooManyWaitersError):
        table.recreate(0.0, token, options())
    assert caught.value.metadata["limit"] == "3"
    assert worker.used["sessions"] == 1


def test_a_retry_with_the_same_request_id_is_the_same_waiter_not_another() -> None:
    table = _table(max_waiters=1)
    first = create_waiting(table, 0.0, request_id="r1")
    assert table.create(1.0, "q", options(), request_id="r1") is first
    with pytest.raises(TooManyWaitersError):
        table.create(1.0, "q", options(), request_id="r2")


@pytest.mark.parametrize("leave", ["cancel", "expire", "placed"])
def test_a_waiter_that_leaves_gives_its_place_back(leave: str) -> None:
    table = _table(max_waiters=1, per_queue=1)
    waiter = create_waiting(table, 0.0, options(creation=5.0))
    if leave == "cancel":
        table.cancel_waiter(0.0, waiter.waiter_id)
    elif leave == "expire":
        table.advance(5.0)
    else:
        connect(table, "w", 2, now=1.0)
        assert len(of_type(table.take_events(), SessionPlaced)) == 1

    table.create(6.0, "q" if leave != "placed" else "other", options())
    assert table.waiting_count() == 1
    # No per-queue counter outlives its waiters (queue names come from callers).
    assert table.waiting.queue_names == {"q" if leave != "placed" else "other"}


def test_a_create_that_does_not_wait_is_never_refused_for_the_cap() -> None:
    table = _table(max_waiters=1, per_queue=1)
    create_waiting(table, 0.0, task_queue="busy")
    connect(table, "w", 1, task_queue="free")
    assert create_placed(table, 0.0, task_queue="free").state.name == "OPEN"


def test_no_caps_by_default_in_the_core() -> None:
    table = _table()
    for _ in range(2000):
        create_waiting(table, 0.0)
    assert table.waiting_count() == 2000
