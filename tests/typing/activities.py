"""Activities the typing checks call (never run)."""

from __future__ import annotations

from dataclasses import dataclass

from sessiond_client import activity


@dataclass(frozen=True)
class Report:
    """A result type."""

    lines: int


@activity.defn
async def download(url: str, retries: int = 3) -> bytes:
    """An async activity with a default parameter."""
    raise NotImplementedError


@activity.defn
def process(data: bytes) -> Report:
    """A sync activity."""
    raise NotImplementedError


@activity.defn
async def ping() -> None:
    """No parameters, no result."""
