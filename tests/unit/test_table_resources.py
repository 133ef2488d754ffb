"""Resources and selectors: hard limits per resource, label matching, the most-free rule for vectors,
Recreate and adoption with vectors, and why a waiting Create cannot be placed."""

from __future__ import annotations

import pytest

from sessiond.core.errors import AdoptionRefusedError, CreationTimeoutError, NoCapacityError
from sessiond.core.events import SessionEnded, SessionPlaced, WaiterFailed
from sessiond.core.model import FailureCause, SessionRecord, SessionState, Waiter, WorkerKey
from sessiond.core.resources import SESSIONS, ResourceVector
from sessiond.core.table import SessionTable
from tests.unit.support import (
    QUEUE,
    connect,
    counting_ids,
    create_placed,
    create_waiting,
    demand,
    failed_for,
    new_table,
    of_type,
    options,
    placed_for,
    registration,
    selector,
    state,
    token_for,
)

# ----------------------------------------------------------------- hard limits per resource


def test_a_request_goes_only_where_every_amount_it_asks_for_is_free() -> None:
    table = new_table()
    connect(table, "cpu", 100)
    gpu = connect(table, "gpu", 100, resources={"gpu": 2})
    first = create_placed(table, asks=demand(gpu=1))
    second = create_placed(table, 1.0, asks=demand(gpu=1))
    assert first.worker is gpu and second.worker is gpu
    assert gpu.used == ResourceVector({SESSIONS: 2, "gpu": 2})
    # 98 sessions free, no gpu: the hard limit is per resource.
    with pytest.raises(NoCapacityError, match="gpu=1,sessions=1"):
        table.create(2.0, QUEUE, options(creation=0.0), demand=demand(gpu=1))
    waiter = create_waiting(table, 2.0, asks=demand(gpu=1))
    table.complete(3.0, first.session_id)
    assert placed_for(table.take_events(), waiter).worker is gpu
    assert gpu.used["gpu"] == 2


def test_zero_amounts_and_sessions_only_requests_do_not_need_a_resource() -> None:
    table = new_table()
    worker = connect(table, "plain", 2)
    assert create_placed(table, asks=ResourceVector({SESSIONS: 1, "gpu": 0})).worker is worker
    assert worker.used == ResourceVector.sessions(1)


def test_an_amount_larger_than_any_capacity_waits_and_says_why() -> None:
    table = new_table()
    connect(table, "small", 4, resources={"gpu": 1})
    with pytest.raises(NoCapacityError) as caught:
        table.create(0.0, QUEUE, options(creation=0.0), demand=demand(gpu=2))
    assert "has the capacity for gpu=2 (largest: 1)" in caught.value.message
    waiter = create_waiting(table, 0.0, options(creation=5.0), asks=demand(gpu=2))
    table.advance(5.0)
    error = failed_for(table.take_events(), waiter).error
    assert isinstance(error, CreationTimeoutError)
    assert error.message == ("no worker of task queue 'q' had gpu=2,sessions=1 free within creation_timeout: "
                             "no connected worker of task queue 'q' has the capacity for gpu=2 (largest: 1)")


# ----------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param("", {"a-h100", "a-a100", "b-h100", "plain"}, id="no-selector"),
        pytest.param("zone=a", {"a-h100", "a-a100"}, id="equality"),
        pytest.param("zone=b,gpu_model=h100", {"b-h100"}, id="two-requirements"),
        pytest.param("gpu_model in (h100,l4)", {"a-h100", "b-h100"}, id="in"),
        pytest.param("gpu_model", {"a-h100", "a-a100", "b-h100"}, id="exists"),
        pytest.param("zone=c", set(), id="no-match"),
    ],
)
def test_a_selector_admits_exactly_the_workers_whose_labels_match(where: str, expected: set[str]) -> None:
    table = new_table()
    connect(table, "a-h100", 2, labels={"zone": "a", "gpu_model": "h100"})
    connect(table, "a-a100", 2, labels={"zone": "a", "gpu_model": "a100"})
    connect(table, "b-h100", 2, labels={"zone": "b", "gpu_model": "h100"})
    connect(table, "plain", 2)
    used = [create_placed(table, float(i), where=where).worker.key.worker_id for i in range(2 * len(expected))]
    assert set(used) == expected
    assert sorted(used) == sorted(2 * list(expected))  # each to its limit, none beyond
    with pytest.raises(NoCapacityError, match="matches the selector" if not expected else "free"):
        table.create(9.0, QUEUE, options(creation=0.0), selector=selector(where))


def test_workers_of_another_queue_with_matching_labels_are_not_candidates() -> None:
    table = new_table()
    connect(table, "elsewhere", 5, task_queue="other", labels={"zone": "a"})
    with pytest.raises(NoCapacityError, match="no worker of task queue 'q' is connected"):
        table.create(0.0, QUEUE, options(creation=0.0), selector=selector("zone=a"))


# ----------------------------------------------------------------- most free, for vectors


@pytest.mark.parametrize(
    ("workers", "asks", "expected"),
    [
        # Dominant share after placement over the requested resources: 1/2 beats 1/1.
        pytest.param({"two": ({"gpu": 2}, {}), "one": ({"gpu": 1}, {})}, {"gpu": 1}, "two", id="larger-share-left"),
        # 3/4 used after vs 1/2: relative, not absolute, room.
        pytest.param({"big": ({"gpu": 4}, {"gpu": 2}), "small": ({"gpu": 2}, {})}, {"gpu": 1}, "small",
                     id="share-not-absolute"),
        # Scratch dominates on the small worker (0.8) but not on the big one (max(0.25, 0.4)).
        pytest.param({"small": ({"gpu": 2, "scratch_gb": 500}, {}), "big": ({"gpu": 4, "scratch_gb": 1000}, {})},
                     {"gpu": 1, "scratch_gb": 400}, "big", id="dominant-resource"),
        # Equal shares: the most free sessions decide.
        pytest.param({"busy": ({"gpu": 2}, {SESSIONS: 5}), "idle": ({"gpu": 2}, {})}, {"gpu": 1}, "idle",
                     id="tie-most-free-sessions"),
        # A sessions-only request ignores other resources: the most free sessions, as before.
        pytest.param({"gpu-box": ({"gpu": 8}, {SESSIONS: 1}), "cpu-box": ({}, {})}, {}, "cpu-box",
                     id="sessions-only-most-free-slots"),
        pytest.param({"gpu-box": ({"gpu": 8}, {}), "cpu-box": ({}, {SESSIONS: 1})}, {}, "gpu-box",
                     id="sessions-only-ignores-gpus"),
        # Only a worker that fits is a candidate, however free it is otherwise.
        pytest.param({"roomy": ({"gpu": 8}, {"gpu": 7}), "tight": ({"gpu": 2}, {})}, {"gpu": 2}, "tight",
                     id="fits-first"),
    ],
)
def test_the_most_free_worker_keeps_the_largest_share_of_what_was_asked_for(
        workers: dict[str, tuple[dict[str, int], dict[str, int]]], asks: dict[str, int], expected: str) -> None:
    table = new_table()
    for worker_id, (resources, used) in workers.items():
        worker = connect(table, worker_id, 10, resources=resources)
        # Fill it to ``used`` with sessions pinned there by a Recreate.
        token = token_for(worker.key)
        fill = dict(used)
        sessions_only = fill.pop(SESSIONS, 0)
        for name, amount in fill.items():
            result = table.recreate(0.0, token, options(), demand=demand(**{name: amount}))
            assert result.worker is worker  # type: ignore[union-attr]
            sessions_only -= 1
        for _ in range(max(0, sessions_only)):
            table.recreate(0.0, token, options())
    assert create_placed(table, 1.0, asks=demand(**asks)).worker.key.worker_id == expected


def test_used_is_the_sum_of_the_open_sessions_vectors_and_is_released_exactly_once() -> None:
    table = new_table()
    worker = connect(table, "w", 4, resources={"gpu": 3, "scratch_gb": 100})
    a = create_placed(table, asks=demand(gpu=2, scratch_gb=60))
    b = create_placed(table, asks=demand(gpu=1, scratch_gb=40))
    assert worker.used == ResourceVector({SESSIONS: 2, "gpu": 3, "scratch_gb": 100})
    table.complete(1.0, a.session_id)
    table.complete(1.0, a.session_id)
    assert worker.used == ResourceVector({SESSIONS: 1, "gpu": 1, "scratch_gb": 40})
    table.complete(2.0, b.session_id)
    assert worker.used == ResourceVector()


# ----------------------------------------------------------------- recreate


def test_a_recreate_keeps_its_worker_and_asks_for_its_own_resources() -> None:
    table = new_table()
    worker = connect(table, "w", 10, resources={"gpu": 2})
    connect(table, "other", 10, resources={"gpu": 8})
    token = token_for(worker.key)
    recreated = table.recreate(1.0, token, options(), demand=demand(gpu=2))
    assert recreated.worker is worker  # type: ignore[union-attr]
    assert recreated.demand == demand(gpu=2)  # type: ignore[union-attr]
    # Its own ask, not the first session's: the worker has no gpu left for another.
    with pytest.raises(NoCapacityError, match="has no room for gpu=1"):
        table.recreate(2.0, token, options(creation=0.0), demand=demand(gpu=1))
    waiter = table.recreate(2.0, token, options(), demand=demand(gpu=1))
    table.complete(3.0, recreated.session_id)  # type: ignore[union-attr]
    assert placed_for(table.take_events(), waiter).worker is worker  # type: ignore[arg-type]


def test_a_recreate_its_worker_could_never_hold_does_not_block_the_ones_behind_it() -> None:
    table = new_table()
    worker = connect(table, "w", 10, resources={"gpu": 1})
    token = token_for(worker.key)
    hog = table.recreate(0.0, token, options(), demand=demand(gpu=1))
    too_big = table.recreate(0.0, token, options(creation=5.0), demand=demand(gpu=4))
    behind = table.recreate(0.0, token, options(), demand=demand(gpu=1))
    # FIFO per worker: a session-only Recreate waits behind the gpu one the worker can hold later...
    plain = table.recreate(0.0, token, options())
    assert isinstance(plain, Waiter)
    events = table.take_events()
    table.complete(1.0, hog.session_id)  # type: ignore[union-attr]
    placed = table.take_events()
    # ...but not behind the one it could never hold.
    assert placed_for(placed, behind).worker is worker  # type: ignore[arg-type]
    assert placed_for(placed, plain).worker is worker
    with pytest.raises(NoCapacityError, match="its capacity: gpu=1,sessions=10"):
        table.recreate(1.0, token, options(creation=0.0), demand=demand(gpu=4))
    table.advance(5.0)
    assert failed_for(table.take_events(), too_big).error.reason == "WORKER_UNAVAILABLE"  # type: ignore[arg-type]
    assert of_type(events, WaiterFailed) == []


# ----------------------------------------------------------------- sessions that outlive processes


def test_a_detached_session_keeps_its_whole_vector_until_it_reattaches() -> None:
    table = new_table()
    worker = connect(table, "w", 10, resources={"gpu": 1})
    session = create_placed(table, 0.0, options(reattach=30.0), asks=demand(gpu=1))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    waiter = create_waiting(table, 2.0, asks=demand(gpu=1))
    table.take_events()
    back = connect(table, "w", 10, now=3.0, resources={"gpu": 1})
    events = table.take_events()
    assert of_type(events, SessionPlaced) == []
    assert session.worker is back and state(session) is SessionState.OPEN
    assert back.used == demand(gpu=1)
    table.complete(4.0, session.session_id)
    assert placed_for(table.take_events(), waiter).worker is back


def test_a_worker_that_comes_back_without_the_resource_fails_the_detached_session() -> None:
    table = new_table()
    worker = connect(table, "w", 10, resources={"gpu": 1})
    session = create_placed(table, 0.0, options(reattach=30.0), asks=demand(gpu=1))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    back = connect(table, "w", 10, now=2.0)
    assert state(session) is SessionState.FAILED
    assert session.failure is not None and session.failure.cause is FailureCause.WORKER_LOST
    assert back.used == ResourceVector()
    assert of_type(table.take_events(), SessionEnded)


def _record(session_id: str, asks: ResourceVector) -> SessionRecord:
    return SessionRecord(session_id=session_id, task_queue=QUEUE, options=options(), owner="", request_id="",
                         recreated=False, placed_at=0.0, expire_at=1000.0, demand=asks,
                         selector=selector("zone=a"))


def test_adoption_counts_the_reported_vector_and_refuses_what_does_not_fit() -> None:
    table = SessionTable(new_id=counting_ids(), recovering_until=30.0)
    held = [_record("s1", demand(gpu=2)), _record("s2", demand(gpu=1)), _record("s3", demand())]
    worker = table.connect_worker(1.0, registration("w", 10, resources={"gpu": 2}, labels={"zone": "a"}), held)
    assert sorted(worker.sessions) == ["s1", "s3"]  # s2 would overdraw the gpus
    assert worker.used == ResourceVector({SESSIONS: 2, "gpu": 2})
    assert table.get("s1").demand == demand(gpu=2) and str(table.get("s1").selector) == "zone=a"
    with pytest.raises(AdoptionRefusedError, match="no room"):
        table.adopt_session(2.0, worker.key, worker.epoch, _record("s4", demand(gpu=1)))


# ----------------------------------------------------------------- why a Create waits


def test_waiting_kinds_say_which_requests_no_connected_worker_could_ever_hold() -> None:
    table = new_table()
    connect(table, "a1", 1, resources={"gpu": 1}, labels={"zone": "a"})
    connect(table, "b1", 4, resources={"gpu": 2}, labels={"zone": "b"})
    drain = connect(table, "c1", 4, resources={"gpu": 8}, labels={"zone": "c"})
    table.worker_goodbye(0.0, drain.key, drain.epoch, drain=True)
    create_placed(table, asks=demand(gpu=1), where="zone=a")
    create_waiting(table, 1.0, asks=demand(gpu=1), where="zone=a")
    create_waiting(table, 2.0, asks=demand(gpu=1), where="zone=a")
    create_waiting(table, 3.0, asks=demand(gpu=2), where="zone=a")
    create_waiting(table, 4.0, asks=demand(gpu=1), where="zone=d")
    create_waiting(table, 5.0, asks=demand(tpu=1))
    create_waiting(table, 6.0, asks=demand(gpu=4), where="zone=c")
    create_waiting(table, 7.0, task_queue="empty")
    kinds = {(k.task_queue, str(k.demand), str(k.selector)): (k.count, k.oldest_since, k.unplaceable)
             for k in table.waiting_kinds()}
    assert kinds == {
        (QUEUE, "gpu=1,sessions=1", "zone=a"): (2, 1.0, None),
        (QUEUE, "gpu=2,sessions=1", "zone=a"): (
            1, 3.0, "no connected worker matching the selector 'zone=a' has the capacity for gpu=2 (largest: 1)"),
        (QUEUE, "gpu=1,sessions=1", "zone=d"): (
            1, 4.0, "no connected worker of task queue 'q' matches the selector 'zone=d'"),
        (QUEUE, "sessions=1,tpu=1", ""): (
            1, 5.0, "no connected worker of task queue 'q' has the capacity for tpu=1 (largest: 0)"),
        (QUEUE, "gpu=4,sessions=1", "zone=c"): (1, 6.0, "every connected worker that matches is draining"),
        ("empty", "sessions=1", ""): (1, 7.0, "no worker of task queue 'empty' is connected"),
    }
    assert [k.task_queue for k in table.waiting_kinds(task_queue="empty")] == ["empty"]
    # A worker that could hold it joins: the older gpu=1 requests take its two gpus first (FIFO), and
    # the gpu=2 request now waits for room, not for a worker.
    connect(table, "a2", 4, now=8.0, resources={"gpu": 2}, labels={"zone": "a"})
    now_kinds = {(k.task_queue, str(k.demand), str(k.selector)): (k.count, k.unplaceable)
                 for k in table.waiting_kinds()}
    assert (QUEUE, "gpu=1,sessions=1", "zone=a") not in now_kinds
    assert now_kinds[(QUEUE, "gpu=2,sessions=1", "zone=a")] == (1, None)


def test_a_request_that_needs_two_resources_no_single_worker_has_is_explained() -> None:
    table = new_table()
    connect(table, "gpus", 4, resources={"gpu": 2})
    connect(table, "disks", 4, resources={"scratch_gb": 500})
    create_waiting(table, asks=demand(gpu=1, scratch_gb=100))
    (kind,) = table.waiting_kinds()
    assert kind.unplaceable == ("no single connected worker of task queue 'q' has the capacity for all of "
                                "gpu=1,scratch_gb=100,sessions=1")


# ----------------------------------------------------------------- the index


def test_workers_are_indexed_by_label_set_and_partitioned_by_free_amounts() -> None:
    table = new_table()
    for i in range(1000):
        connect(table, f"w{i}", 100, resources={"gpu": 2}, labels={"zone": f"z{i % 10}"})
    index = table.registry.candidates
    groups = index.matching(QUEUE, selector(""))
    assert len(groups) == 10
    in_zone = index.matching(QUEUE, selector("zone=z3"))
    assert [g.labels for g in in_zone] == [{"zone": "z3"}]
    assert index.matching(QUEUE, selector("zone=z3")) is in_zone  # cached per selector
    assert all(len(g.partitions) == 1 and g.capacities == {ResourceVector({SESSIONS: 100, "gpu": 2}): 100}
               for g in groups)
    for i in range(150):
        create_placed(table, float(i), asks=demand(gpu=1), where="zone=z3")
    # 100 workers, gpu free 0, 1 or 2: at most three partitions, however many workers.
    (group,) = in_zone
    assert 1 <= len(group.partitions) <= 3
    # A new label set drops the cached matches of its queue.
    connect(table, "new", 10, labels={"zone": "z3", "ssd": "yes"})
    assert len(index.matching(QUEUE, selector("zone=z3"))) == 2


def test_a_label_set_without_workers_is_forgotten() -> None:
    table = new_table()
    worker = connect(table, "w", 1, labels={"zone": "a"})
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    assert table.registry.candidates.matching(QUEUE, selector("")) == ()
    assert table.registry.candidates.why_unplaceable(QUEUE, demand(), selector("")) == \
        "no worker of task queue 'q' is connected"
    assert WorkerKey(QUEUE, "w") not in table.registry.workers
