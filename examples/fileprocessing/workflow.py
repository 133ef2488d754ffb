"""The caller side: the seed's ``SomeFileProcessingWorkflow`` and its continue-as-new variant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sessiond_client import SessionClient

TASK_QUEUE = "fileprocessing"


async def some_file_processing_workflow(
    client: SessionClient, source_url: str, upload_url: str
) -> list[dict[str, Any]]:
    """Download, process and upload one file, all in one session on one worker."""
    async with client.create_session(
        TASK_QUEUE, creation_timeout=timedelta(seconds=10), execution_timeout=timedelta(minutes=5),
    ) as session:
        downloaded = await session.execute_activity("download", source_url)
        processed = await session.execute_activity("process", downloaded["path"])
        uploaded = await session.execute_activity("upload", processed["path"], upload_url)
        return [downloaded, processed, uploaded]


async def survive_a_worker_restart(client: SessionClient, source_url: str, upload_url: str,
                                   restart: Callable[[str], Awaitable[None]]) -> list[dict[str, Any]]:
    """Download, then the worker process restarts (``restart``), then process and upload: the session
    waits for its worker (``reattach_timeout``) and the restarted process continues from its disk."""
    async with client.create_session(
        TASK_QUEUE, creation_timeout=timedelta(seconds=10), reattach_timeout=timedelta(seconds=30),
    ) as session:
        downloaded = await session.execute_activity("download", source_url)
        await restart(downloaded["worker"])
        # Sent as soon as the restarted worker has the session back (it waits meanwhile).
        processed = await session.execute_activity("process", downloaded["path"])
        uploaded = await session.execute_activity("upload", processed["path"], upload_url)
        return [downloaded, processed, uploaded]


async def download_then_continue(client: SessionClient, source_url: str) -> tuple[dict[str, Any], bytes]:
    """Run 1 of a continue-as-new chain: download, complete the session, keep its recreate token."""
    async with client.create_session(TASK_QUEUE, creation_timeout=timedelta(seconds=10)) as session:
        downloaded = await session.execute_activity("download", source_url)
        return downloaded, session.recreate_token


async def continue_on_same_worker(client: SessionClient, token: bytes, local_path: str,
                                  upload_url: str) -> list[dict[str, Any]]:
    """Run 2: recreate the session on the same worker and use the file run 1 left on its disk."""
    async with client.recreate_session(token, creation_timeout=timedelta(seconds=10)) as session:
        processed = await session.execute_activity("process", local_path)
        uploaded = await session.execute_activity("upload", processed["path"], upload_url)
        return [processed, uploaded]
