"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Selenium, against a
real sessiond with real worker processes.

What an operator relies on: the workers and their capacity are on the page; a session a caller
creates appears without a reload; a SIGKILLed worker's session turns FAILED with WORKER_LOST on
the page; the Complete button closes a session; with a token the page asks for it; and the page
stays readable in a narrow window. Screenshots go to the test's output directory (tmp_path).

Without Chromium the tests are skipped with what to install; under ``CI=true`` they fail instead
(``make test`` installs it first when it can: scripts/ensure_browser.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client.api.v1 import session_pb2

from tests.integration.conftest import QUEUE, Sessiond, eventually
from tests.ui.browser import Browser, require_browser
from tests.ui.conftest import dashboard_url

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

# How long the page may take to show a change: a poll interval (1 s) plus rendering, with room for a busy machine.
SHOWS_WITHIN = 20.0


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh headless Chromium with its own profile (quit at teardown)."""
    chromium, driver = require_browser()
    started = Browser(chromium, driver)
    try:
        yield await started.start()
    finally:
        await started.close()


async def _row(browser: Browser, table: str, **expected: str) -> dict[str, str] | None:
    """The first row of ``table`` whose cells contain the expected texts (by column label), or None."""
    for row in await browser.rows(table):
        if all(text in row.get(label, "") for label, text in expected.items()):
            return row
    return None


async def _shown(browser: Browser, table: str, timeout: float = SHOWS_WITHIN, **expected: str) -> dict[str, str]:
    """Wait until such a row is on the page."""
    row: dict[str, str] = await eventually(lambda: _row(browser, table, **expected), timeout=timeout,
                                           interval=0.2, message=f"{table} row with {expected}")
    return row


async def test_workers_and_sessions_show_live_and_a_killed_worker_turns_its_session_failed(
        sessiond: Sessiond, spawn_worker: Any, browser: Browser, tmp_path: Path) -> None:
    workers = {name: await spawn_worker(name, capacity=2, host_name=f"{name}.example")
               for name in ("gpu-box-1", "gpu-box-2")}
    await browser.open(dashboard_url(sessiond) + "/")
    await browser.js("window.__notReloaded = true")

    for name in workers:
        row = await _shown(browser, "workers", Worker=name)
        assert row["Host"] == f"{name}.example"
        assert "sessions 0 / 2" in row["Capacity"]
        assert row["State"] == "ready"
    queue = await _shown(browser, "queues", **{"Task queue": QUEUE})
    assert "sessions 0 / 4" in queue["Used / capacity"] and "2 ready / 2" in queue["Workers"]

    # A test caller creates a session: it appears without a reload, on its worker's row too.
    session = await sessiond.create(owner="alice/report-42")
    holder = session.worker.worker_id
    row = await _shown(browser, "sessions", Session=session.session_id, State="OPEN")
    assert row["Owner"] == "alice/report-42" and holder in row["Worker"]
    await _shown(browser, "workers", Worker=holder, Capacity="sessions 1 / 2")
    await browser.screenshot(tmp_path / "dashboard-open-session.png")

    # SIGKILL the session's worker: the same row turns FAILED with WORKER_LOST, still without a reload.
    workers[holder].signal(signal.SIGKILL)
    row = await _shown(browser, "sessions", Session=session.session_id, State="FAILED")
    assert "WORKER_LOST" in row["Failure"]
    assert row["Action"] == "–", "a FAILED session offers no Complete button"
    await _shown(browser, "recent", Session=session.session_id[:8], Cause="WORKER_LOST")
    await eventually(lambda: _gone(browser, holder), timeout=SHOWS_WITHIN, interval=0.2,
                     message="the killed worker left the workers table")
    assert await browser.js("return window.__notReloaded === true"), "the page was reloaded"
    assert "WORKER_LOST: 1" in await browser.text("legend")

    shot = await browser.screenshot(tmp_path / "dashboard-worker-lost.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert await browser.console_errors() == []


async def _gone(browser: Browser, worker_id: str) -> bool:
    return await _row(browser, "workers", Worker=worker_id) is None


async def test_the_complete_button_closes_a_stuck_session_and_frees_its_slot(
        sessiond: Sessiond, spawn_worker: Any, browser: Browser, tmp_path: Path) -> None:
    await spawn_worker("gpu-box-1", capacity=1)
    await spawn_worker("gpu-box-2", capacity=1)
    stuck = await sessiond.create(owner="bob/etl-7")
    await browser.open(dashboard_url(sessiond) + "/")
    await _shown(browser, "sessions", Session=stuck.session_id, State="OPEN")

    await browser.click(f'button[aria-label="Complete session {stuck.session_id}"]')
    question = await browser.accept_alert()

    assert stuck.session_id in question
    await _shown(browser, "sessions", Session=stuck.session_id, State="CLOSED")
    assert (await sessiond.get(stuck.session_id)).state == 3  # CLOSED
    await _shown(browser, "workers", Worker=stuck.worker.worker_id, Capacity="sessions 0 / 1")
    assert await browser.console_errors() == []


async def test_with_a_token_the_page_asks_for_it_and_then_shows_the_server(
        make_server: Any, spawn_worker: Any, browser: Browser) -> None:
    del spawn_worker  # not used: this server is not the fixture's
    server = await make_server(ui_listen="127.0.0.1:0", caller_token="op-secret")
    await browser.open(dashboard_url(server) + "/")

    await eventually(lambda: _visible(browser, "login"), timeout=SHOWS_WITHIN, interval=0.2)
    assert not await _visible(browser, "content")
    await browser.type_into("token", "wrong")
    await browser.click("#login-form button[type=submit]")
    await eventually(lambda: _contains(browser, "login-error", "refused"), timeout=SHOWS_WITHIN, interval=0.2)

    await browser.type_into("token", "op-secret")
    await browser.click("#login-form button[type=submit]")

    await eventually(lambda: _visible(browser, "content"), timeout=SHOWS_WITHIN, interval=0.2)
    assert "auth token" in await browser.text("server")
    assert not await _visible(browser, "login")
    assert await browser.js("return document.cookie") == "", "the token is not kept in a cookie"
    assert await browser.js("return window.localStorage.length + window.sessionStorage.length") == 0


async def _visible(browser: Browser, element_id: str) -> bool:
    return bool(await browser.js("return !document.getElementById(arguments[0]).hidden", element_id))


async def _contains(browser: Browser, element_id: str, text: str) -> bool:
    return text in await browser.text(element_id)


async def test_the_page_is_readable_in_a_narrow_window(
        sessiond: Sessiond, spawn_worker: Any, browser: Browser, tmp_path: Path) -> None:
    await spawn_worker("gpu-box-1", capacity=4, host_name="a-rather-long-host-name.example.internal")
    session = await sessiond.create(owner="carol/a-long-owner-key-for-a-training-run")
    await browser.resize(400, 900)
    await browser.open(dashboard_url(sessiond) + "/")

    await _shown(browser, "sessions", Session=session.session_id)

    overflow = await browser.js("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at 400 px wide"
    labels = await browser.js(
        "return getComputedStyle(document.querySelector('#sessions tbody td'), '::before').content")
    assert labels == '"Session"', "narrow rows label each value"
    await browser.screenshot(tmp_path / "dashboard-narrow.png")


async def test_gpu_capacities_labels_and_a_create_no_worker_could_hold_are_shown(
        sessiond: Sessiond, spawn_worker: Any, browser: Browser, tmp_path: Path) -> None:
    await spawn_worker("gpu-box-1", capacity=4, capacities={"gpu": 2}, labels={"zone": "a"})
    held = await sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 1}))
    stuck = asyncio.create_task(sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 4})))
    try:
        await browser.open(dashboard_url(sessiond) + "/")
        row = await _shown(browser, "workers", Worker="gpu-box-1", Capacity="gpu 1 / 2")
        assert "zone=a" in row["Worker"] and "sessions 1 / 4" in row["Capacity"]
        queue = await _shown(browser, "queues", **{"Task queue": QUEUE, "Cannot be placed": "1 waiting"})
        assert "gpu 4" in queue["Cannot be placed"] and "(largest: 2)" in queue["Cannot be placed"]
        await browser.screenshot(tmp_path / "dashboard-unplaceable.png")
        assert await browser.console_errors() == []
    finally:
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stuck
    await sessiond.complete(held.session_id)
