"""A worker whose stream does not take what is queued for it gets no new sessions until it drains."""

from __future__ import annotations

import pytest

from sessiond.core.errors import NoCapacityError, WorkerUnavailableError
from sessiond.core.events import SessionPlaced
from sessiond.core.model import SessionState
from tests.unit.support import connect, create_placed, create_waiting, new_table, of_type, options, placed_for


def test_a_backlogged_worker_takes_no_new_session_and_its_open_ones_carry_on() -> None:
    table = new_table()
    slow = connect(table, "slow", 4)
    held = create_placed(table, 0.0)
    table.worker_backlogged(1.0, slow.key, slow.epoch, True)

    with pytest.raises(NoCapacityError):
        table.create(1.0, "q", options(creation=0.0))
    with pytest.raises(WorkerUnavailableError, match="backlogged"):
        table.recreate(1.0, table.recreate_token(held), options(creation=0.0))
    assert held.state is SessionState.OPEN
    fast = connect(table, "fast", 1, now=1.0)
    assert create_placed(table, 1.0).worker is fast


def test_a_drained_worker_serves_the_waiters_at_once() -> None:
    table = new_table()
    slow = connect(table, "slow", 2)
    table.worker_backlogged(0.0, slow.key, slow.epoch, True)
    waiter = create_waiting(table, 1.0)
    table.take_events()

    table.worker_backlogged(2.0, slow.key, slow.epoch, False)

    session = placed_for(table.take_events(), waiter)
    assert session.worker is slow and session.placed_at == 2.0


def test_a_stale_connection_or_no_change_does_nothing() -> None:
    table = new_table()
    slow = connect(table, "slow", 2)
    table.worker_backlogged(0.0, slow.key, slow.epoch + 1, True)  # another stream's epoch: fenced
    assert slow.eligible
    table.worker_backlogged(0.0, slow.key, slow.epoch, False)  # already not backlogged
    assert of_type(table.take_events(), SessionPlaced) == []
