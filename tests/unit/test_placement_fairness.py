"""The fairness policy among waiting Creates: FIFO per kind, a bounded skip-ahead, then holding.

One worker with 2 GPUs is the standard scene: a request for 2 GPUs (big) waits while requests for 1
(small) keep it from ever seeing both free, unless the policy steps in.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond.core.errors import CreationTimeoutError
from sessiond.core.events import SessionPlaced
from sessiond.core.model import Session, Waiter
from sessiond.core.placement import MAX_SKIPS, Placer
from sessiond.core.resources import ResourceVector
from sessiond.core.table import SessionTable
from tests.unit.support import (
    QUEUE,
    connect,
    create_placed,
    create_waiting,
    demand,
    failed_for,
    new_table,
    of_type,
    options,
    placed_for,
    selector,
)

SMALL = demand(gpu=1)
BIG = demand(gpu=2)


def _create(table: SessionTable, now: float, asks: ResourceVector, where: str = "",
            creation: float = 600.0) -> Session | Waiter:
    return table.create(now, QUEUE, options(creation=creation), demand=asks, selector=selector(where))


def test_a_large_request_is_passed_at_most_max_skips_times_then_the_small_ones_wait_for_it() -> None:
    table = new_table(max_skips=3)
    connect(table, "w", 100, resources={"gpu": 2})
    small = [create_placed(table, 0.0, asks=SMALL)]
    big = create_waiting(table, 1.0, asks=BIG)
    for i in range(3):
        # Each small request takes the GPU the big one needs: a skip.
        small.append(create_placed(table, 2.0 + i, asks=SMALL))
        assert big.skipped == i + 1
        table.complete(2.5 + i, small[i].session_id)
    assert big.holding
    # One GPU is free, but taking it would pass the big request a fourth time: the small one waits.
    held_back = create_waiting(table, 6.0, asks=SMALL)
    table.take_events()
    table.complete(7.0, small[3].session_id)
    events = table.take_events()
    assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [big.waiter_id]
    big_session = placed_for(events, big)
    assert big_session.worker.used["gpu"] == 2
    table.complete(8.0, big_session.session_id)
    assert placed_for(table.take_events(), held_back).demand == SMALL


def test_without_competition_small_requests_go_first_and_a_large_one_is_not_held_back() -> None:
    table = new_table(max_skips=3)
    connect(table, "w", 100, resources={"gpu": 2})
    first = create_placed(table, asks=SMALL)
    big = create_waiting(table, 1.0, asks=BIG)
    table.complete(2.0, first.session_id)
    # Both GPUs free: the big request, the oldest head, is served first (FIFO across kinds).
    assert placed_for(table.take_events(), big).demand == BIG
    assert big.skipped == 0


@pytest.mark.parametrize(
    ("where", "asks", "lands_on", "skips"),
    [
        # Takes the GPU the big request needs on the one worker it could use.
        pytest.param("zone=a", {"gpu": 1}, "a", 1, id="competing"),
        # Takes a session slot there, but leaves plenty: the big request does not need that slot.
        pytest.param("zone=a", {}, "a", 0, id="sessions-only-with-room"),
        # Lands on a worker the big request could never use: another zone, or too small for it.
        pytest.param("zone=b", {"gpu": 1}, "b", 0, id="other-zone"),
        pytest.param("size=small", {"gpu": 1}, "tiny", 0, id="too-small-for-it"),
    ],
)
def test_only_a_request_that_takes_what_the_waiting_one_needs_counts_as_a_skip(
        where: str, asks: dict[str, int], lands_on: str, skips: int) -> None:
    table = new_table(max_skips=3)
    connect(table, "a", 100, resources={"gpu": 2}, labels={"zone": "a"})
    connect(table, "b", 100, resources={"gpu": 2}, labels={"zone": "b"})
    connect(table, "tiny", 10, resources={"gpu": 1}, labels={"zone": "a", "size": "small"})
    assert create_placed(table, asks=SMALL, where="zone=a").worker.key.worker_id == "a"
    big = create_waiting(table, 1.0, asks=BIG, where="zone=a")
    later = create_placed(table, 2.0, asks=demand(**asks), where=where)
    assert later.worker.key.worker_id == lands_on
    assert big.skipped == skips


def test_a_request_no_worker_could_ever_hold_is_never_skipped_and_holds_nothing() -> None:
    table = new_table(max_skips=2)
    worker = connect(table, "w", 100, resources={"gpu": 2})
    huge = create_waiting(table, 0.0, asks=demand(gpu=4))
    for i in range(10):
        session = create_placed(table, 1.0 + i, asks=SMALL)
        table.complete(1.5 + i, session.session_id)
    assert huge.skipped == 0 and not huge.holding
    assert worker.used == ResourceVector()
    (kind,) = table.waiting_kinds()
    assert kind.unplaceable is not None and "largest: 2" in kind.unplaceable


@pytest.mark.parametrize("end", ["expires", "is-cancelled"])
def test_when_a_holding_request_leaves_the_ones_it_held_back_are_placed_at_once(end: str) -> None:
    table = new_table(max_skips=1)
    connect(table, "w", 100, resources={"gpu": 2})
    hog = create_placed(table, asks=SMALL)
    big = create_waiting(table, 1.0, options(creation=10.0), asks=BIG)
    create_placed(table, 2.0, asks=SMALL)  # the one skip allowed
    assert big.holding
    table.complete(3.0, hog.session_id)
    held_back = create_waiting(table, 4.0, asks=SMALL)
    table.take_events()
    if end == "expires":
        table.advance(10.999)
        assert table.take_events() == []
        table.advance(11.0)  # exactly at the big request's deadline
    else:
        table.cancel_waiter(5.0, big.waiter_id)
    events = table.take_events()
    assert placed_for(events, held_back).demand == SMALL
    if end == "expires":
        assert isinstance(failed_for(events, big).error, CreationTimeoutError)


def test_requests_of_one_kind_are_served_first_in_first_out() -> None:
    table = new_table()
    connect(table, "w", 100, resources={"gpu": 1})
    hog = create_placed(table, asks=SMALL)
    waiters = [create_waiting(table, 1.0 + i, asks=SMALL) for i in range(3)]
    table.take_events()
    current = hog
    for i, waiter in enumerate(waiters):
        table.complete(10.0 + i, current.session_id)
        events = table.take_events()
        assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [waiter.waiter_id]
        current = placed_for(events, waiter)


def test_a_new_request_queues_behind_a_waiting_one_of_its_kind_even_when_it_would_fit() -> None:
    table = new_table()
    connect(table, "w", 100, resources={"gpu": 2}, labels={"zone": "a"})
    create_placed(table, asks=SMALL)
    create_placed(table, asks=SMALL)
    early = create_waiting(table, 1.0, asks=SMALL, where="zone=a")
    # Nothing is free either way; then one GPU frees and the earlier one of the kind takes it.
    late = create_waiting(table, 2.0, asks=SMALL, where="zone=a")
    first = next(iter(table.registry.workers.values())).sessions
    table.complete(3.0, sorted(first)[0])
    events = table.take_events()
    placed_for(events, early)
    assert late.waiter_id not in {e.waiter_id for e in of_type(events, SessionPlaced)}


def test_the_skip_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_skips"):
        Placer(new_table().registry.candidates, new_table().waiting, max_skips=0)
    assert MAX_SKIPS >= 1


# ----------------------------------------------------------------- property


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["small", "big", "done"]), min_size=1, max_size=60), st.integers(1, 4))
def test_no_large_request_is_passed_more_than_max_skips_times_and_everyone_is_placed_in_the_end(
        steps: list[str], max_skips: int) -> None:
    """One 2-GPU worker; every small placement while a big request is the oldest big one competes
    with it. Whatever the interleaving: a big request sees at most max_skips later small requests
    placed while it is the oldest big one, and completing sessions places every request."""
    table = new_table(max_skips=max_skips)
    connect(table, "w", 1000, resources={"gpu": 2})
    now = 0.0
    arrivals: dict[str, tuple[int, str]] = {}  # waiter or session id -> (arrival index, kind)
    order: list[str] = []  # placements, as arrival ids, in order
    open_sessions: list[Session] = []
    by_waiter: dict[str, str] = {}

    def drain() -> None:
        for event in table.take_events():
            if isinstance(event, SessionPlaced) and event.waiter_id is not None:
                order.append(by_waiter[event.waiter_id])
                open_sessions.append(event.session)

    for index, step in enumerate(steps):
        now += 1.0
        if step == "done":
            if open_sessions:
                table.complete(now, open_sessions.pop(0).session_id)
        else:
            result = _create(table, now, SMALL if step == "small" else BIG)
            name = f"r{index}"
            arrivals[name] = (index, step)
            if isinstance(result, Session):
                order.append(name)
                open_sessions.append(result)
            else:
                by_waiter[result.waiter_id] = name
        drain()
        for waiter in table.waiters():
            assert waiter.skipped <= max_skips
    while open_sessions:
        now += 1.0
        table.complete(now, open_sessions.pop(0).session_id)
        drain()
    assert table.waiting_count() == 0
    assert sorted(order) == sorted(arrivals)
    bigs = [name for name, (_, kind) in sorted(arrivals.items(), key=lambda x: x[1][0]) if kind == "big"]
    position = {name: i for i, name in enumerate(order)}
    for i, big in enumerate(bigs):
        # It is the oldest big one from its arrival or the placement of the big one before it.
        since = max(position[bigs[i - 1]] if i else -1, -1)
        passed = [name for name in order[since + 1:position[big]]
                  if arrivals[name][1] == "small" and arrivals[name][0] > arrivals[big][0]]
        assert len(passed) <= max_skips, (big, passed)
