"""DeadlineQueue: one live entry per key, due means ``deadline <= now``, earliest first."""

from __future__ import annotations

import math
import random

import pytest

from sessiond.core.deadlines import DeadlineQueue, LowWater
from tests.unit.support import before


def test_empty_queue_has_nothing_due_and_no_earliest_deadline() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    assert queue.pop_due(1e9) == []
    assert queue.peek() is None
    assert len(queue) == 0


def test_key_is_due_exactly_at_its_deadline_and_not_a_moment_before() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("a", 10.0)
    assert queue.pop_due(before(10.0)) == []
    assert "a" in queue
    assert queue.pop_due(10.0) == ["a"]
    assert "a" not in queue
    assert queue.pop_due(10.0) == []


def test_pop_due_returns_keys_earliest_first_and_leaves_later_ones() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for key, deadline in [("c", 3.0), ("a", 1.0), ("late", 9.0), ("b", 2.0)]:
        queue.set(key, deadline)
    assert queue.pop_due(5.0) == ["a", "b", "c"]
    assert queue.peek() == 9.0
    assert len(queue) == 1


def test_equal_deadlines_pop_in_insertion_order() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for key in ["x", "y", "z", "w"]:
        queue.set(key, 5.0)
    assert queue.pop_due(5.0) == ["x", "y", "z", "w"]


@pytest.mark.parametrize(
    ("first", "second"),
    [pytest.param(5.0, 8.0, id="pushed-later"), pytest.param(8.0, 5.0, id="pulled-earlier")],
)
def test_set_again_replaces_the_old_deadline(first: float, second: float) -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("k", first)
    queue.set("k", second)
    assert queue.deadline("k") == second
    assert len(queue) == 1
    assert queue.peek() == second
    assert queue.pop_due(before(second)) == []
    assert queue.pop_due(second) == ["k"]
    assert queue.pop_due(max(first, second)) == []


def test_replaced_key_is_popped_once_not_once_per_schedule() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for deadline in [4.0, 3.0, 2.0, 1.0]:
        queue.set("k", deadline)
    assert queue.pop_due(100.0) == ["k"]


def test_setting_the_same_deadline_again_keeps_the_key_once() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("k", 2.0)
    queue.set("k", 2.0)
    assert queue.pop_due(2.0) == ["k"]


def test_removed_key_is_never_due_and_removing_twice_is_harmless() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("gone", 1.0)
    queue.set("kept", 2.0)
    queue.remove("gone")
    queue.remove("gone")
    queue.remove("never-set")
    assert queue.deadline("gone") is None
    assert queue.peek() == 2.0
    assert queue.pop_due(10.0) == ["kept"]


def test_peek_skips_removed_and_replaced_entries() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("a", 1.0)
    queue.set("b", 2.0)
    queue.remove("a")
    queue.set("b", 7.0)
    assert queue.peek() == 7.0


def test_key_can_be_scheduled_again_after_it_was_popped() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.set("k", 1.0)
    assert queue.pop_due(1.0) == ["k"]
    queue.set("k", 3.0)
    assert queue.pop_due(2.0) == []
    assert queue.pop_due(3.0) == ["k"]


def test_many_replaces_compact_the_heap_without_losing_or_duplicating_keys() -> None:
    queue: DeadlineQueue[int] = DeadlineQueue()
    keys = range(50)
    for round_ in range(40):
        for key in keys:
            queue.set(key, float(1000 - round_ * 10 + key))
    # 2000 sets on 50 keys: compaction has run, so the heap holds far fewer than 2000 entries.
    assert len(queue._heap) <= 2 * len(queue) + 64 + 1
    expected_last = {key: float(1000 - 39 * 10 + key) for key in keys}
    assert {key: queue.deadline(key) for key in keys} == expected_last
    assert queue.pop_due(1e9) == sorted(keys, key=lambda k: expected_last[k])
    assert len(queue) == 0
    assert queue.peek() is None


def test_random_set_and_remove_matches_a_plain_dict_model() -> None:
    rng = random.Random(1234)
    queue: DeadlineQueue[int] = DeadlineQueue()
    model: dict[int, float] = {}
    now = 0.0
    for _ in range(5000):
        op = rng.random()
        key = rng.randrange(40)
        if op < 0.6:
            deadline = now + rng.choice([0.0, 0.5, 1.0, 2.0, 5.0])
            queue.set(key, deadline)
            model[key] = deadline
        elif op < 0.8:
            queue.remove(key)
            model.pop(key, None)
        else:
            now += rng.choice([0.0, 0.5, 1.0])
            due = queue.pop_due(now)
            expected = {k for k, d in model.items() if d <= now}
            assert set(due) == expected
            assert len(due) == len(expected)
            assert [model[k] for k in due] == sorted(model[k] for k in due)
            for k in due:
                del model[k]
        assert len(queue) == len(model)
        assert queue.peek() == (min(model.values()) if model else None)


def test_low_water_keeps_the_earliest_deadline_set_on_any_sharing_queue_until_taken() -> None:
    mark = LowWater()
    first: DeadlineQueue[str] = DeadlineQueue(mark)
    second: DeadlineQueue[str] = DeadlineQueue(mark)
    assert mark.take() == math.inf
    first.set("a", 30.0)
    second.set("b", 20.0)
    first.set("c", 25.0)
    assert mark.take() == 20.0
    assert mark.take() == math.inf  # taking resets it


def test_low_water_is_not_raised_by_removals_or_later_deadlines() -> None:
    # A timer armed at the earliest deadline only needs to know about earlier ones.
    mark = LowWater()
    queue: DeadlineQueue[str] = DeadlineQueue(mark)
    queue.set("a", 10.0)
    mark.take()
    queue.remove("a")
    queue.set("b", 40.0)
    assert mark.take() == 40.0
    queue.set("b", 40.0)  # the same deadline again changes nothing
    assert mark.take() == math.inf
    queue.set("b", 5.0)  # moved earlier
    assert mark.take() == 5.0


def test_a_timer_armed_by_the_low_water_never_fires_after_the_earliest_deadline() -> None:
    # The engine's rule: a full peek when no timer is armed, else only the mark.
    rng = random.Random(7)
    mark = LowWater()
    queues: list[DeadlineQueue[int]] = [DeadlineQueue(mark) for _ in range(3)]
    timer_at = math.inf
    for _ in range(3000):
        queue = rng.choice(queues)
        key = rng.randrange(20)
        if rng.random() < 0.6:
            queue.set(key, rng.uniform(0.0, 100.0))
        else:
            queue.remove(key)
        if rng.random() < 0.05:  # the timer fires: everything due by then goes, it is unarmed
            now = timer_at if timer_at != math.inf else rng.uniform(0.0, 100.0)
            for q in queues:
                q.pop_due(now)
            timer_at = math.inf
        new = mark.take()
        if timer_at == math.inf:
            new = min((t for q in queues if (t := q.peek()) is not None), default=math.inf)
        timer_at = min(timer_at, new)
        earliest = min((t for q in queues if (t := q.peek()) is not None), default=math.inf)
        assert timer_at <= earliest
