"""One structured log line per lifecycle event, with ids; ``--log-format json`` makes it JSON."""

from __future__ import annotations

import json
import logging
import signal
import sys

import pytest
from sessiond_client.api.v1 import worker_pb2

from sessiond.logs import JsonFormatter, TextFormatter
from tests.integration.conftest import QUEUE, ProcessFactory, Sessiond, WorkerFactory, eventually


def _events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sessiond.engine"]


def _find(records: list[logging.LogRecord], message: str, **fields: str) -> logging.LogRecord | None:
    for record in records:
        if record.getMessage() == message and all(getattr(record, k, None) == v for k, v in fields.items()):
            return record
    return None


@pytest.mark.asyncio
async def test_lifecycle_events_are_logged_once_each_with_their_ids(
    sessiond: Sessiond, spawn_worker: ProcessFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sessiond.engine")
    worker = await spawn_worker("logged-w1", capacity=2)
    completed = await sessiond.create()
    await sessiond.complete(completed.session_id)
    failed = await sessiond.create()
    worker.signal(signal.SIGKILL)
    await eventually(lambda: _find(_events(caplog), "worker lost", worker_id="logged-w1") is not None)

    records = _events(caplog)
    assert _find(records, "worker joined", worker_id="logged-w1", task_queue=QUEUE)
    for session in (completed, failed):
        placed = [r for r in records if r.getMessage() == "session placed"
                  and getattr(r, "session_id", None) == session.session_id]
        assert len(placed) == 1 and placed[0].worker_id == "logged-w1"  # type: ignore[attr-defined]
    assert _find(records, "session completed", session_id=completed.session_id, worker_id="logged-w1")
    assert _find(records, "session failed", session_id=failed.session_id, cause="WORKER_LOST")


@pytest.mark.asyncio
async def test_a_worker_repeating_register_costs_one_warning_and_keeps_its_stream(
    sessiond: Sessiond, make_worker: WorkerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sessiond.engine")
    worker = await make_worker("chatty", capacity=1)
    register = worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
        task_queue=QUEUE, worker_id="chatty", identity="x", max_concurrent_sessions=1))
    for _ in range(200):
        worker._send(register)
    await worker.goodbye(drain=True)  # answered after every message before it
    await eventually(lambda: bool(worker.goodbye_acks))

    warnings = [r.getMessage() for r in _events(caplog) if r.levelno >= logging.WARNING]
    assert warnings == ["ignored a repeated register: worker chatty sent register twice on one stream"]
    assert worker.stream_error is None and not worker.stream_done.is_set()


def test_json_format_puts_the_ids_in_fields_and_text_format_appends_them() -> None:
    record = logging.LogRecord("sessiond.engine", logging.INFO, __file__, 1, "session failed", None, None)
    record.session_id, record.cause = "s-1", "WORKER_LOST"

    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("level", "logger", "message", "session_id", "cause")} == {
        "level": "INFO", "logger": "sessiond.engine", "message": "session failed",
        "session_id": "s-1", "cause": "WORKER_LOST"}
    assert TextFormatter().format(record).endswith("session failed session_id=s-1 cause=WORKER_LOST")


def test_text_format_never_writes_raw_control_characters_from_peer_values() -> None:
    forged = "w1\n2026-01-01 00:00:00,000 INFO sessiond.engine worker joined worker_id=admin\x1b[2K\x00\u2028"
    record = logging.LogRecord("sessiond.engine", logging.INFO, __file__, 1, "worker %s said %r", (forged, "x"), None)
    record.worker_id = forged

    line = TextFormatter().format(record)

    assert "\n" not in line and "\x1b" not in line and "\x00" not in line and "\u2028" not in line
    assert len(line.splitlines()) == 1
    assert "worker_id=w1\\n2026-01-01" in line, line  # escaped, still readable
    assert "\\x1b[2K\\x00\\u2028" in line, line


def test_text_format_keeps_a_traceback_on_its_own_lines() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("sessiond.server", logging.ERROR, __file__, 1, "internal\nerror", None,
                                   sys.exc_info())
    lines = TextFormatter().format(record).splitlines()

    assert lines[0].endswith("internal\\nerror")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"
