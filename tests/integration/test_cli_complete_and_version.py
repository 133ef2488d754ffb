"""`sessiond sessions complete ID` frees a stuck session; `sessiond --version` names both packages."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys

import pytest
import sessiond_client

import sessiond
from sessiond.cli import main
from tests.integration.conftest import CLOSED, FAILED, OPEN, REPO_ROOT, Sessiond, WorkerFactory, eventually


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.asyncio
async def test_sessions_complete_frees_the_slot_so_a_waiting_create_is_placed(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("exclusive", capacity=1)
    stuck = await sessiond.create()
    waiting = asyncio.create_task(sessiond.create(timeout=30))  # the worker is full: it waits

    code, out, err = await asyncio.to_thread(_run, "sessions", "complete", stuck.session_id,
                                             "--address", sessiond.target)

    assert code == 0, err
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert (fields["Session ID"], fields["State"]) == (stuck.session_id, "CLOSED")
    placed = await asyncio.wait_for(waiting, 10)
    assert placed.state == OPEN and placed.worker.worker_id == "exclusive"
    assert (await sessiond.get(stuck.session_id)).state == CLOSED
    assert stuck.session_id in worker.ended


@pytest.mark.asyncio
async def test_sessions_complete_is_idempotent_and_json_shows_the_failed_state_it_keeps(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w")
    session = await sessiond.create()
    await worker.stop()  # WORKER_LOST
    await eventually(lambda: _failed(sessiond, session.session_id))

    code, out, err = await asyncio.to_thread(_run, "sessions", "complete", session.session_id,
                                             "--address", sessiond.target, "--json")

    assert code == 0, err
    shown = json.loads(out)
    assert (shown["state"], shown["failure"]["cause"]) == ("SESSION_STATE_FAILED", "FAILURE_CAUSE_WORKER_LOST")


async def _failed(sessiond: Sessiond, session_id: str) -> bool:
    return (await sessiond.get(session_id)).state == FAILED


@pytest.mark.asyncio
async def test_sessions_complete_of_an_unknown_id_exits_1_with_the_reason(sessiond: Sessiond) -> None:
    code, out, err = await asyncio.to_thread(_run, "sessions", "complete", "nope", "--address", sessiond.target)

    assert (code, out) == (1, "")
    assert err == "sessiond: NOT_FOUND (SESSION_NOT_FOUND): session 'nope' not found\n"


def test_version_names_both_distributions_and_matches_the_packaging_metadata() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "sessiond", "--version"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sessiond {sessiond.__version__} (sessiond-client {sessiond_client.__version__})"
    assert version("sessiond") == sessiond.__version__
    assert version("sessiond-client") == sessiond_client.__version__ == sessiond.__version__
