"""Typed views of the protobuf messages: enums mirror the proto, dataclasses are built from it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from sessiond_client import (
    FailureCause,
    SessionFailure,
    SessionInfo,
    SessionOptions,
    SessionState,
    WorkerInfo,
    WorkerRef,
)
from sessiond_client._time import duration_to_proto, to_seconds, to_timedelta
from sessiond_client.api.v1 import session_pb2


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def dur(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def test_session_state_mirrors_the_proto_enum() -> None:
    names = {n.removeprefix("SESSION_STATE_"): v for n, v in session_pb2.SessionState.items()}
    assert {s.name: s.value for s in SessionState} == {k: v for k, v in names.items() if k != "UNSPECIFIED"}
    assert [s.is_terminal for s in SessionState] == [False, True, True]


def test_failure_cause_mirrors_the_proto_enum() -> None:
    names = {n.removeprefix("FAILURE_CAUSE_"): v for n, v in session_pb2.FailureCause.items()}
    assert {c.name: c.value for c in FailureCause} == names


def full_session() -> session_pb2.Session:
    return session_pb2.Session(
        session_id="s-1",
        task_queue="q",
        state=session_pb2.SESSION_STATE_FAILED,
        worker=session_pb2.WorkerRef(worker_id="w-1", identity="42@host", host_name="host"),
        recreate_token=b"token",
        create_time=ts(1_700_000_000, 500_000_000),
        expire_time=ts(1_700_086_400),
        close_time=ts(1_700_000_100),
        owner="alice",
        failure=session_pb2.Failure(cause=session_pb2.FAILURE_CAUSE_WORKER_LOST, message="stream ended"),
        options=session_pb2.SessionOptions(
            creation_timeout=dur(0), execution_timeout=dur(86_400), heartbeat_timeout=dur(2, 500_000_000)
        ),
    )


def test_session_info_from_proto() -> None:
    info = SessionInfo._from_proto(full_session())
    assert info == SessionInfo(
        session_id="s-1",
        task_queue="q",
        state=SessionState.FAILED,
        worker=WorkerRef(worker_id="w-1", identity="42@host", host_name="host"),
        recreate_token=b"token",
        create_time=datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC),
        expire_time=datetime(2023, 11, 15, 22, 13, 20, tzinfo=UTC),
        close_time=datetime(2023, 11, 14, 22, 15, 0, tzinfo=UTC),
        owner="alice",
        failure=SessionFailure(FailureCause.WORKER_LOST, "stream ended"),
        options=SessionOptions(
            creation_timeout=timedelta(0), execution_timeout=timedelta(days=1), heartbeat_timeout=timedelta(seconds=2.5)
        ),
    )
    assert info.host_name == "host"
    assert info.create_time is not None and info.create_time.tzinfo is UTC


def test_unset_fields_are_none() -> None:
    info = SessionInfo._from_proto(session_pb2.Session(session_id="s", state=session_pb2.SESSION_STATE_OPEN))
    assert info.state is SessionState.OPEN
    assert (info.create_time, info.expire_time, info.close_time, info.owner, info.failure) == (None,) * 5
    assert info.options == SessionOptions()
    assert info.worker == WorkerRef("", "", "")


def test_failed_without_a_failure_message_still_has_a_failure() -> None:
    info = SessionInfo._from_proto(session_pb2.Session(state=session_pb2.SESSION_STATE_FAILED))
    assert info.failure == SessionFailure(FailureCause.UNSPECIFIED, "")


def test_values_from_a_newer_server_degrade_safely() -> None:
    msg = session_pb2.Session(state=9, failure=session_pb2.Failure(cause=77))  # type: ignore[arg-type]
    info = SessionInfo._from_proto(msg)
    assert info.state is SessionState.FAILED  # stop sending work rather than crash
    assert info.failure is not None and info.failure.cause is FailureCause.UNSPECIFIED


def test_dataclasses_are_frozen() -> None:
    info = SessionInfo._from_proto(full_session())
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.state = SessionState.OPEN  # type: ignore[misc]


def test_session_options_round_trip_and_leave_unset_fields_unset() -> None:
    options = SessionOptions(creation_timeout=timedelta(0), heartbeat_timeout=timedelta(milliseconds=1500))
    msg = options._to_proto()
    assert msg.HasField("creation_timeout")  # explicit 0 = do not wait, distinct from unset
    assert not msg.HasField("execution_timeout")
    assert SessionOptions._from_proto(msg) == options


def test_worker_info_from_proto() -> None:
    msg = session_pb2.WorkerInfo(
        worker_id="w",
        task_queue="q",
        identity="i",
        host_name="h",
        max_concurrent_sessions=3,
        open_sessions=2,
        draining=True,
        connect_time=ts(0),
    )
    assert WorkerInfo._from_proto(msg) == WorkerInfo(
        worker_id="w",
        task_queue="q",
        identity="i",
        host_name="h",
        max_concurrent_sessions=3,
        open_sessions=2,
        draining=True,
        connect_time=datetime(1970, 1, 1, tzinfo=UTC),
        last_heartbeat_time=None,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(timedelta(seconds=1.5), 1.5), (2, 2.0), (0.25, 0.25), (timedelta(0), 0.0), (-1, -1.0)],
)
def test_durations_accept_timedelta_or_seconds(value: timedelta | float, expected: float) -> None:
    assert to_seconds(value) == expected
    assert to_timedelta(value) == timedelta(seconds=expected)
    assert duration_to_proto(value).ToTimedelta() == timedelta(seconds=expected)


@pytest.mark.parametrize("bad", ["1", None, True])
def test_durations_reject_other_types(bad: object) -> None:
    with pytest.raises(TypeError):
        to_timedelta(bad)  # type: ignore[arg-type]


def test_resources_selectors_capacities_and_labels_come_through_read_only() -> None:
    msg = full_session()
    msg.resources.update({"sessions": 1, "gpu": 2})
    msg.options.resources.update({"gpu": 2})
    msg.options.selector = "zone=a"
    info = SessionInfo._from_proto(msg)
    assert dict(info.resources) == {"gpu": 2, "sessions": 1}
    assert (dict(info.options.resources), info.options.selector) == ({"gpu": 2}, "zone=a")
    with pytest.raises(TypeError):
        info.resources["gpu"] = 3  # type: ignore[index]
    # A server without resources: the session holds its one slot.
    assert dict(SessionInfo._from_proto(full_session()).resources) == {"sessions": 1}
    worker = WorkerInfo._from_proto(session_pb2.WorkerInfo(
        worker_id="w", capacities={"sessions": 4, "gpu": 2}, used={"sessions": 1, "gpu": 2}, labels={"zone": "a"}))
    assert (dict(worker.capacities), dict(worker.used), dict(worker.labels)) == (
        {"gpu": 2, "sessions": 4}, {"gpu": 2, "sessions": 1}, {"zone": "a"})
    assert dict(worker.free) == {"gpu": 0, "sessions": 3}


def test_resources_and_selector_go_on_the_wire_only_when_asked_for() -> None:
    plain = SessionOptions()._to_proto()
    assert len(plain.resources) == 0 and plain.selector == ""
    asked = SessionOptions(resources={"gpu": 1}, selector="zone=a")._to_proto()
    assert dict(asked.resources) == {"gpu": 1} and asked.selector == "zone=a"
    assert SessionOptions._from_proto(asked) == SessionOptions(resources={"gpu": 1}, selector="zone=a")
