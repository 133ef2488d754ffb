"""The dashboard's JSON API against a real server: shapes, paging, filters, the complete action,
errors, and the guards (tokens, Host, Origin).

Every test runs a real grpc.aio sessiond on port 0 with ``--ui-listen 127.0.0.1:0`` and real
(in-process, raw-protocol) workers, and talks HTTP to it with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sessiond_client.api.v1 import session_pb2

from sessiond.ui import http as ui_http
from tests.integration.conftest import QUEUE, Sessiond, eventually, options
from tests.ui.conftest import Dash, dashboard_url

pytestmark = pytest.mark.asyncio


async def _queue(dash: Dash, name: str) -> dict[str, Any] | None:
    overview = await dash.get("/api/v1/overview")
    return next((q for q in overview["queues"] if q["task_queue"] == name), None)


# --------------------------------------------------------------------- the page


async def test_the_page_and_its_files_are_served_with_no_external_resources_and_strict_headers(dash: Dash) -> None:
    async with dash.http.get(dash.base + "/") as page:
        html = await page.text()
        assert page.status == 200
        assert page.content_type == "text/html"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html
    assert "http://" not in html and "https://" not in html, "the page must load nothing from elsewhere"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with dash.http.get(f"{dash.base}/static/{name}") as response:
            body = await response.text()
            assert response.status == 200 and response.content_type == kind
            assert "http://" not in body and "https://" not in body and "@import" not in body
    async with dash.http.get(dash.base + "/static/../../etc/passwd") as response:
        assert response.status == 404
    async with dash.http.get(dash.base + "/static/missing.js") as response:
        assert response.status == 404
        assert response.headers["X-Content-Type-Options"] == "nosniff", "error pages get the headers too"


# --------------------------------------------------------------------- overview


async def test_overview_shows_each_task_queue_with_capacity_used_and_available_per_resource(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1", capacity=2)
    await make_worker("w2", capacity=3)
    await sessiond.create()

    queue = await eventually(lambda: _queue_with(dash, QUEUE, open_sessions=1))

    assert queue == {
        "task_queue": QUEUE, "workers": 2, "ready_workers": 2, "draining_workers": 0, "silent_workers": 0,
        "open_sessions": 1, "capacity": {"sessions": 5}, "used": {"sessions": 1}, "available": {"sessions": 4},
        "waiting": 0, "waiting_recreates": 0, "oldest_wait_s": None, "waiting_unplaceable": 0, "waiting_requests": [],
    }
    overview = await dash.get("/api/v1/overview")
    assert overview["totals"] == {"workers": 2, "open_sessions": 1, "waiting": 0, "task_queues": 1}
    server = overview["server"]
    assert server["incarnation"] == sessiond.server.engine.incarnation
    assert server["auth"] == "none" and server["poll_interval_ms"] == 1000
    assert server["grpc_listen"] == sessiond.target, "the port actually bound, not the 0 asked for"


async def _queue_with(dash: Dash, name: str, **expected: Any) -> dict[str, Any] | None:
    queue = await _queue(dash, name)
    if queue is None or any(queue[k] != v for k, v in expected.items()):
        return None
    return queue


async def test_a_draining_worker_is_counted_but_its_free_slots_are_not_available(
        dash: Dash, make_worker: Any) -> None:
    draining = await make_worker("w1", capacity=2)
    await make_worker("w2", capacity=3)

    await draining.goodbye(drain=True)

    queue = await eventually(lambda: _queue_with(dash, QUEUE, draining_workers=1))
    assert queue["capacity"] == {"sessions": 5}
    assert queue["available"] == {"sessions": 3}
    assert queue["ready_workers"] == 1


async def test_waiting_creates_are_shown_per_queue_with_the_age_of_the_oldest(
        sessiond: Sessiond, dash: Dash) -> None:
    waiting = asyncio.create_task(sessiond.create("nobody-serves-this", options=options(creation=30)))
    try:
        first = await eventually(lambda: _queue_with(dash, "nobody-serves-this", waiting=1))
        assert first["workers"] == 0 and first["capacity"] == {}
        assert first["oldest_wait_s"] is not None and first["oldest_wait_s"] >= 0

        later = await eventually(
            lambda: _older(dash, "nobody-serves-this", first["oldest_wait_s"]), message="the wait ages")
        assert later["waiting"] == 1
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiting
    # A caller that gives up leaves nothing behind on the page either.
    await eventually(lambda: _gone(dash, "nobody-serves-this"))


async def test_a_waiting_create_no_worker_could_hold_is_shown_with_why(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1", capacity=2, capacities={"gpu": 1}, labels={"zone": "a"})
    holder = await sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 1}))
    fits_later = asyncio.create_task(sessiond.create(options=session_pb2.SessionOptions(resources={"gpu": 1})))
    never = asyncio.create_task(sessiond.create(options=session_pb2.SessionOptions(
        resources={"gpu": 1}, selector="zone=b")))
    try:
        queue = await eventually(lambda: _queue_with(dash, QUEUE, waiting=2))
        assert queue["waiting_unplaceable"] == 1
        assert [(k["resources"], k["selector"], k["count"], k["unplaceable_reason"])
                for k in queue["waiting_requests"]] == [
            ({"gpu": 1, "sessions": 1}, "", 1, None),
            ({"gpu": 1, "sessions": 1}, "zone=b",
             1, f"no connected worker of task queue {QUEUE!r} matches the selector 'zone=b'"),
        ]
        workers = await dash.get("/api/v1/workers")
        assert workers["workers"][0]["labels"] == {"zone": "a"}
        assert workers["workers"][0]["capacity"] == {"sessions": 2, "gpu": 1}
        assert workers["workers"][0]["used"] == {"sessions": 1, "gpu": 1}
        sessions = await dash.get("/api/v1/sessions")
        assert sessions["sessions"][0]["resources"] == {"sessions": 1, "gpu": 1}
    finally:
        for task in (fits_later, never):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    await sessiond.complete(holder.session_id)


async def _older(dash: Dash, name: str, than: float) -> dict[str, Any] | None:
    queue = await _queue(dash, name)
    return queue if queue is not None and queue["oldest_wait_s"] > than else None


async def _gone(dash: Dash, name: str) -> bool:
    return await _queue(dash, name) is None


async def test_the_overview_is_one_shared_snapshot_for_every_viewer_within_its_lifetime(
        dash: Dash, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui_http, "SNAPSHOT_TTL", 3600.0)
    replies = await asyncio.gather(*(dash.get("/api/v1/overview") for _ in range(5)))
    later = await dash.get("/api/v1/overview")

    assert len({r["generated_time"] for r in [*replies, later]}) == 1

    monkeypatch.setattr(ui_http, "SNAPSHOT_TTL", 0.0)
    assert (await dash.get("/api/v1/overview"))["generated_time"] != later["generated_time"], "rebuilt once stale"


# --------------------------------------------------------------------- workers


async def test_a_worker_shows_identity_host_capacity_heartbeat_and_the_sessions_it_holds(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1", capacity=2, host_name="gpu-box-1", identity="pid-1@gpu-box-1")
    session = await sessiond.create()

    page = await dash.get("/api/v1/workers")

    assert page["next_page_token"] == ""
    [worker] = page["workers"]
    assert worker["worker_id"] == "w1" and worker["task_queue"] == QUEUE
    assert worker["identity"] == "pid-1@gpu-box-1" and worker["host_name"] == "gpu-box-1"
    assert worker["capacity"] == {"sessions": 2} and worker["used"] == {"sessions": 1}
    assert worker["state"] == "ready" and worker["draining"] is False
    assert worker["open_sessions"] == 1 and worker["sessions"] == [session.session_id]
    assert 0 <= worker["last_heartbeat_age_s"] < 30
    assert worker["labels"] == {}
    assert worker["connect_time"].endswith("Z") and worker["last_heartbeat_time"].endswith("Z")

    await sessiond.create()
    full = await dash.get("/api/v1/workers")
    assert full["workers"][0]["state"] == "full"


async def test_workers_are_paged_by_key_and_filtered_by_task_queue(dash: Dash, make_worker: Any) -> None:
    for worker_id in ("a", "b", "c"):
        await make_worker(worker_id)
    await make_worker("d", task_queue="other")

    first = await dash.get("/api/v1/workers", page_size=2)
    second = await dash.get("/api/v1/workers", page_size=2, page_token=first["next_page_token"])

    assert [(w["task_queue"], w["worker_id"]) for w in first["workers"] + second["workers"]] == [
        ("other", "d"), (QUEUE, "a"), (QUEUE, "b"), (QUEUE, "c")]
    assert second["next_page_token"] == ""
    only = await dash.get("/api/v1/workers", task_queue="other")
    assert [w["worker_id"] for w in only["workers"]] == ["d"]


# --------------------------------------------------------------------- sessions


async def test_sessions_are_paged_oldest_first(sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1", capacity=5)
    created = [(await sessiond.create(owner=f"owner-{i}")).session_id for i in range(5)]

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await dash.get("/api/v1/sessions", page_size=2, page_token=token)
        pages += 1
        seen += [s["session_id"] for s in page["sessions"]]
        token = page["next_page_token"]
        if not token:
            break

    assert seen == created
    assert pages == 3


async def test_a_session_shows_state_worker_age_owner_options_and_activity_counts(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1", host_name="gpu-box-1")
    session = await sessiond.create(owner="alice/report-42", options=options(heartbeat=5))
    await sessiond.execute(session.session_id, "echo", 1)
    await sessiond.execute(session.session_id, "echo", 2)

    body = await dash.get(f"/api/v1/sessions/{session.session_id}")

    shown = body["session"]
    assert shown["session_id"] == session.session_id and shown["state"] == "OPEN"
    assert shown["owner"] == "alice/report-42" and shown["task_queue"] == QUEUE
    assert shown["worker"]["worker_id"] == "w1" and shown["worker"]["host_name"] == "gpu-box-1"
    assert shown["activity_count"] == 2 and shown["activities_in_flight"] == 0
    assert shown["options"]["heartbeat_timeout_s"] == 5
    assert shown["resources"] == {"sessions": 1}
    assert shown["failure"] is None and shown["close_time"] is None and shown["detached_since"] is None
    assert shown["age_s"] >= 0 and shown["create_time"].endswith("Z")
    assert "recreate_token" not in shown, "a recreate token is a capability; the dashboard does not show it"


async def test_sessions_filter_by_queue_owner_state_failure_cause_and_worker(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    doomed = await make_worker("w1", capacity=2)
    await make_worker("w2", capacity=2)
    await make_worker("w3", task_queue="other")
    s1 = await sessiond.create(owner="alice")
    s2 = await sessiond.create(owner="bob")
    s3 = await sessiond.create(owner="carol")
    s4 = await sessiond.create("other")
    by_worker: dict[str, list[str]] = {}
    for s in (s1, s2, s3):
        by_worker.setdefault(s.worker.worker_id, []).append(s.session_id)
    lost = by_worker["w1"]
    kept = by_worker["w2"]
    await sessiond.complete(kept[0])

    doomed.close()  # the stream ends without a goodbye: WORKER_LOST

    async def ids(**filters: Any) -> list[str]:
        return [s["session_id"] for s in (await dash.get("/api/v1/sessions", **filters))["sessions"]]

    await eventually(lambda: _failed(dash, lost))
    assert await ids(cause="worker_lost") == lost
    assert await ids(state="failed", cause="WORKER_LOST") == lost
    assert await ids(cause="heartbeat_timeout") == []
    assert await ids(worker_id="w2") == kept
    assert await ids(state="closed") == kept[:1]
    assert await ids(task_queue="other") == [s4.session_id]
    assert await ids(owner="carol") == [s3.session_id]
    assert sorted(await ids(state="open")) == sorted([*kept[1:], s4.session_id])
    failed = (await dash.get(f"/api/v1/sessions/{lost[0]}"))["session"]
    assert failed["failure"] == {"cause": "WORKER_LOST", "message": "the worker's stream ended without a goodbye"}
    assert failed["close_time"] is not None


async def _failed(dash: Dash, session_ids: list[str]) -> bool:
    for session_id in session_ids:
        if (await dash.get(f"/api/v1/sessions/{session_id}"))["session"]["state"] != "FAILED":
            return False
    return True


# --------------------------------------------------------------------- failures


async def test_each_failure_lands_in_the_timeline_and_the_latest_failures_by_cause(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    worker = await make_worker("w1", capacity=3)
    sessions = [(await sessiond.create(owner=f"o{i}")).session_id for i in range(3)]

    worker.close()

    overview = await eventually(lambda: _failures(dash, 3))
    failures = overview["failures"]
    assert failures["totals"] == {"WORKER_LOST": 3}
    assert sum(b["counts"].get("WORKER_LOST", 0) for b in failures["timeline"]) == 3
    assert len(failures["timeline"]) == 60 and failures["bucket_s"] == 60
    assert "WORKER_LOST" in failures["causes"]
    recent = failures["recent"]
    assert sorted(r["session_id"] for r in recent) == sorted(sessions)
    assert {(r["cause"], r["worker_id"], r["task_queue"]) for r in recent} == {("WORKER_LOST", "w1", QUEUE)}
    assert all(r["age_s"] >= 0 and r["time"].endswith("Z") and r["message"] for r in recent)
    [latest] = (await dash.get("/api/v1/failures", limit=1))["recent"]
    assert latest["session_id"] == recent[0]["session_id"]


async def _failures(dash: Dash, count: int) -> dict[str, Any] | None:
    overview = await dash.get("/api/v1/overview")
    return overview if len(overview["failures"]["recent"]) >= count else None


# --------------------------------------------------------------------- the complete action


async def test_completing_a_stuck_session_closes_it_and_frees_its_slot(
        sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    worker = await make_worker("w1", capacity=1)
    session = await sessiond.create()

    reply = await dash.request("POST", f"/api/v1/sessions/{session.session_id}/complete")

    assert reply.status == 200, reply.body
    assert reply.body["changed"] is True and reply.body["session"]["state"] == "CLOSED"
    assert (await sessiond.get(session.session_id)).state == 3  # CLOSED over gRPC too
    await eventually(lambda: session.session_id in worker.ended, message="the worker was told")
    assert (await sessiond.create(options=options(creation=0))).worker.worker_id == "w1", "the slot is free"
    again = await dash.request("POST", f"/api/v1/sessions/{session.session_id}/complete")
    assert again.status == 200 and again.body["changed"] is False
    missing = await dash.request("POST", "/api/v1/sessions/no-such-session/complete")
    assert missing.status == 404 and missing.body["error"]["reason"] == "SESSION_NOT_FOUND"


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(("params", "field"), [
    ({"state": "bogus"}, "state"),
    ({"cause": "bogus"}, "cause"),
    ({"page_size": "abc"}, "page_size"),
    ({"page_size": "-1"}, "page_size"),
    ({"page_token": "not-a-token"}, "page_token"),
    ({"owner": "x" * 300}, "owner"),
    ({"task_queue": "q" * 300}, "task_queue"),
])
async def test_a_bad_query_parameter_is_a_400_that_names_it(dash: Dash, params: dict[str, str], field: str) -> None:
    reply = await dash.request("GET", "/api/v1/sessions", **params)

    assert reply.status == 400, reply.body
    assert reply.body["error"]["reason"] == "INVALID_ARGUMENT"
    assert field in reply.body["error"]["message"]


async def test_unknown_paths_and_methods_answer_json_errors(dash: Dash) -> None:
    missing = await dash.request("GET", "/api/v1/nothing-here")
    wrong_method = await dash.request("DELETE", "/api/v1/sessions")
    bad_worker_token = await dash.request("GET", "/api/v1/workers", page_token="%%%")

    assert missing.status == 404 and missing.body["error"]["status"] == 404
    assert wrong_method.status == 405 and wrong_method.body["error"]["status"] == 405
    assert bad_worker_token.status == 400 and "page_token" in bad_worker_token.body["error"]["message"]


# --------------------------------------------------------------------- access


async def test_with_tokens_the_api_needs_the_caller_token_and_refuses_the_worker_token(
        make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(ui_listen="127.0.0.1:0", caller_token="op-secret", worker_token="wk-secret")
    base = dashboard_url(server)
    anonymous, wrong = Dash(http, base), Dash(http, base, token="guess")
    worker, operator = Dash(http, base, token="wk-secret"), Dash(http, base, token="op-secret")

    page = await anonymous.request("GET", "/")
    assert page.status == 200, "the page itself holds no data and loads without a token"
    for path in ("/api/v1/overview", "/api/v1/workers", "/api/v1/sessions", "/api/v1/failures"):
        denied = await anonymous.request("GET", path)
        assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await wrong.request("GET", path)).status == 401
        refused = await worker.request("GET", path)
        assert refused.status == 403 and refused.body["error"]["reason"] == "PERMISSION_DENIED"
        assert (await operator.request("GET", path)).status == 200
    assert (await anonymous.request("POST", "/api/v1/sessions/x/complete")).status == 401
    assert (await operator.request("POST", "/api/v1/sessions/x/complete")).status == 404
    basic = await anonymous.request("GET", "/api/v1/overview", headers={"Authorization": "Basic b3A6c2VjcmV0"})
    assert basic.status == 401
    assert (await operator.get("/api/v1/overview"))["server"]["auth"] == "token"


async def test_with_principals_only_the_operator_role_reads_and_completes_and_a_reload_applies(
        make_server: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops-token ops operator\nteam-a-token team-a caller\nworker-token workers worker\n")
    server = await make_server(ui_listen="127.0.0.1:0", tokens_file=tokens)
    base = dashboard_url(server)
    operator, caller, worker = (Dash(http, base, token=t) for t in ("ops-token", "team-a-token", "worker-token"))
    anonymous, wrong = Dash(http, base), Dash(http, base, token="guess")

    assert (await operator.get("/api/v1/overview"))["server"]["auth"] == "token"
    for path in ("/api/v1/overview", "/api/v1/sessions", "/api/v1/failures"):
        for who, status in ((anonymous, 401), (wrong, 401), (caller, 403), (worker, 403)):
            answer = await who.request("GET", path)
            assert answer.status == status, (path, who.token, answer.status)
        assert (await caller.request("POST", "/api/v1/sessions/x/complete")).status == 403
    # The operator role comes from the server's one authenticator: a SIGHUP-style reload applies here too.
    tokens.write_text("new-ops-token ops operator\n")
    assert server.server.reload_credentials()
    assert (await operator.request("GET", "/api/v1/overview")).status == 401
    assert (await Dash(http, base, token="new-ops-token").request("GET", "/api/v1/overview")).status == 200


async def test_a_loopback_dashboard_answers_only_loopback_host_names(dash: Dash) -> None:
    port = dash.base.rsplit(":", 1)[1]
    rebound = await dash.request("GET", "/api/v1/overview", headers={"Host": f"attacker.example:{port}"})
    page = await dash.request("GET", "/", headers={"Host": f"attacker.example:{port}"})

    assert rebound.status == 421 and page.status == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert (await dash.request("GET", "/api/v1/overview", headers={"Host": host})).status == 200


async def test_a_cross_origin_request_is_refused(sessiond: Sessiond, dash: Dash, make_worker: Any) -> None:
    await make_worker("w1")
    session = await sessiond.create()
    path = f"/api/v1/sessions/{session.session_id}/complete"

    forged = await dash.request("POST", path, headers={"Origin": "http://attacker.example"})
    assert forged.status == 403 and forged.body["error"]["reason"] == "CROSS_ORIGIN"
    assert (await sessiond.get(session.session_id)).state == 1, "still OPEN"

    own = await dash.request("POST", path, headers={"Origin": dash.base})
    assert own.status == 200 and own.body["session"]["state"] == "CLOSED"


async def test_a_dashboard_without_a_token_off_loopback_is_a_warning_at_start(
        make_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiond.ui"):
        await make_server(ui_listen="0.0.0.0:0")
        await make_server(ui_listen="0.0.0.0:0", caller_token="op-secret")
        await make_server(ui_listen="127.0.0.1:0")

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "has no token" in warnings[0], warnings


async def test_the_dashboard_stops_with_the_server(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(ui_listen="127.0.0.1:0")
    base = dashboard_url(server)
    assert (await Dash(http, base).request("GET", "/api/v1/overview")).status == 200

    await server.server.stop(0)

    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(base + "/api/v1/overview"):
            pass
