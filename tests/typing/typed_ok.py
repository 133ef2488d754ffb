"""Typed activity calls that must type-check (mypy --strict), with the types mypy must infer."""

from __future__ import annotations

from typing import Any, assert_type

from sessiond_client import RetryPolicy, Session
from sessiond_client.sync import SyncSession

from tests.typing.activities import Report, download, ping, process


async def caller(session: Session) -> None:
    data = await session.execute_activity(download, "https://example.com/a.csv")
    assert_type(data, bytes)
    data = await session.execute_activity(download, "https://example.com/a.csv", 5, start_to_close_timeout=30)
    report = await session.execute_activity(process, data, retry_policy=RetryPolicy(maximum_attempts=3))
    assert_type(report, Report)
    assert_type(await session.execute_activity(ping, heartbeat_timeout=10), None)
    # By name: untyped, unless result_type says what to decode.
    assert_type(await session.execute_activity("download", "u"), Any)
    assert_type(await session.execute_activity("process", b"", result_type=Report), Report)


def sync_caller(session: SyncSession) -> None:
    assert_type(session.execute_activity(download, "u"), bytes)
    assert_type(session.execute_activity(process, b"x"), Report)
    assert_type(session.execute_activity("process", b"x", result_type=int), int)
