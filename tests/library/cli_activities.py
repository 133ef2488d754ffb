"""Activities the worker-CLI tests load as ``tests.library.cli_activities:ACTIVITIES``."""

from __future__ import annotations

import os

from sessiond_client import activity


@activity.defn
async def pid() -> int:
    """The worker process's id: proves the activity ran in the CLI's process."""
    return os.getpid()


@activity.defn
def shout(text: str) -> str:
    """A sync activity."""
    return text.upper()


ACTIVITIES = [pid, shout]
NOT_ACTIVITIES = 42
BY_NAME = {"yell": shout}
