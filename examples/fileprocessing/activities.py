"""The activities a file-processing worker runs. Each returns where it ran.

``download`` fetches a file over HTTP into the worker's *local* scratch directory,
``process`` reads that local file and writes a result beside it, ``upload`` POSTs the result
back. Only the worker that downloaded the file has it on disk.

Each step also notes what it left on disk for its session (``<scratch>/sessions/<id>.json``), so a
worker process that restarts with the same worker id and scratch directory can tell, when the
server gives it its sessions back, whether it can continue them (:func:`can_continue`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from sessiond_client import activity

SCRATCH = Path(os.environ.get("FILEPROCESSING_SCRATCH", "/tmp"))
WORKER_NAME = os.environ.get("FILEPROCESSING_WORKER", f"worker-{os.getpid()}")


def _journal(session_id: str) -> Path:
    return SCRATCH / "sessions" / f"{session_id}.json"


def _note(path: Path) -> None:
    """Record that the current session has ``path`` on this worker's disk."""
    journal = _journal(activity.info().session_id)
    journal.parent.mkdir(parents=True, exist_ok=True)
    files = json.loads(journal.read_text())["files"] if journal.exists() else []
    journal.write_text(json.dumps({"files": [*files, str(path)]}))


def can_continue(session_id: str) -> bool:
    """True when every file the session left on this worker's disk is still there."""
    journal = _journal(session_id)
    if not journal.exists():
        return False
    return all(Path(p).exists() for p in json.loads(journal.read_text())["files"])


def _where() -> dict[str, Any]:
    info = activity.info()
    return {"worker": WORKER_NAME, "host": socket.gethostname(), "pid": os.getpid(), "session_id": info.session_id}


@activity.defn
def download(url: str) -> dict[str, Any]:
    """Fetch ``url`` into this worker's scratch directory; return the local path."""
    name = hashlib.sha256(url.encode()).hexdigest()[:12] + ".txt"
    local = SCRATCH / name
    with urllib.request.urlopen(url, timeout=10) as response:
        local.write_bytes(response.read())
    _note(local)
    return {**_where(), "path": str(local), "bytes": local.stat().st_size}


@activity.defn
def process(path: str, slow_seconds: float = 0.0) -> dict[str, Any]:
    """Count the words of the local file and write an upper-cased copy beside it.

    ``slow_seconds`` makes the step take that long (polling for cancellation), so the demo can
    kill the worker mid-way.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{path} is not on this worker ({WORKER_NAME}): the steps ran on different workers")
    deadline = time.monotonic() + slow_seconds
    while time.monotonic() < deadline:
        if activity.wait_for_cancelled(0.05):
            raise RuntimeError("cancelled")
    text = source.read_text()
    result = source.with_suffix(".processed.txt")
    result.write_text(text.upper())
    _note(result)
    return {**_where(), "path": str(result), "words": len(text.split())}


@activity.defn
def upload(path: str, url: str) -> dict[str, Any]:
    """POST the local result file to ``url``."""
    data = Path(path).read_bytes()
    request = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        stored = response.read().decode()
    return {**_where(), "stored_as": stored}


ACTIVITIES = [download, process, upload]
