"""Typed activity calls that must NOT type-check: each marked line is an error mypy must report."""

from __future__ import annotations

from sessiond_client import Session
from sessiond_client.sync import SyncSession

from tests.typing.activities import Report, download, ping, process


async def caller(session: Session) -> None:
    await session.execute_activity(download, 42)  # E: arg-type
    await session.execute_activity(download)  # E: arg-type
    await session.execute_activity(process, "not bytes")  # E: arg-type
    await session.execute_activity(ping, 1)  # E: arg-type
    await session.execute_activity(download, "u", 1, 2)  # E: arg-type
    text: str = await session.execute_activity(process, b"")  # E: arg-type
    await session.execute_activity(download, "u", start_to_close_timout=3)  # E: call-overload
    report: Report = await session.execute_activity("process", b"", result_type=int)  # E: arg-type


def sync_caller(session: SyncSession) -> None:
    session.execute_activity(process, 1)  # E: arg-type
    count: int = session.execute_activity(download, "u")  # E: assignment
