"""The operator commands (`sessiond sessions list|get`, `sessiond workers list`) against a live server.

The CLI is synchronous (a blocking grpc channel), so it runs in a thread while the server and the
raw workers keep running on the test's event loop. One subprocess test checks the installed entry
point end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.cli import main
from tests.integration.conftest import (
    FAILED,
    REPO_ROOT,
    ServerFactory,
    Sessiond,
    WorkerFactory,
    eventually,
)
from tests.integration.rawworker import RawWorker
from tests.support.pki import make_pki


@dataclass
class Result:
    """Exit code and captured output of one CLI run."""

    code: int
    out: str
    err: str

    def rows(self) -> list[str]:
        """The table's data lines (without the header)."""
        return self.out.splitlines()[1:]

    def json(self) -> object:
        """The JSON output, parsed."""
        return json.loads(self.out)


def _run(argv: Sequence[str]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


async def cli(*argv: str) -> Result:
    """Run ``sessiond <argv>`` in a thread, so the server on this loop keeps answering."""
    return await asyncio.to_thread(_run, argv)


@dataclass
class Fleet:
    """A server with three workers and one session in each state.

    ``wa`` (queue ops-a, host-a) holds ``open_a`` (owner alice) and ``closed_a`` (owner bob, CLOSED);
    ``wb`` (queue ops-b, host-b) holds ``open_b``; ``failed_c`` was on ``wc`` (queue ops-c), whose
    stream then broke, so it is FAILED with WORKER_LOST and ``wc`` is gone.
    """

    sessiond: Sessiond
    wa: RawWorker
    wb: RawWorker
    open_a: session_pb2.Session
    closed_a: session_pb2.Session
    open_b: session_pb2.Session
    failed_c: session_pb2.Session

    @property
    def address(self) -> str:
        """--address for the CLI."""
        return self.sessiond.target

    @property
    def by_id(self) -> dict[str, session_pb2.Session]:
        """The fleet's sessions by id."""
        return {s.session_id: s for s in (self.open_a, self.closed_a, self.open_b, self.failed_c)}


@pytest_asyncio.fixture
async def fleet(sessiond: Sessiond, make_worker: WorkerFactory) -> Fleet:
    wa = await make_worker("wa", task_queue="ops-a", capacity=10, host_name="host-a", identity="1@host-a")
    wb = await make_worker("wb", task_queue="ops-b", capacity=2, host_name="host-b", identity="2@host-b")
    wc = await make_worker("wc", task_queue="ops-c", capacity=1, host_name="host-c")
    open_a = await sessiond.create("ops-a", owner="alice")
    closed_a = await sessiond.complete((await sessiond.create("ops-a", owner="bob")).session_id)
    open_b = await sessiond.create("ops-b")
    failed = await sessiond.create("ops-c")
    await wc.stop()  # the stream ends without a goodbye: WORKER_LOST
    failed_c = await eventually(
        lambda: _if_failed(sessiond, failed.session_id), message="the ops-c session fails with WORKER_LOST")
    return Fleet(sessiond, wa, wb, open_a, closed_a, open_b, failed_c)


async def _if_failed(sessiond: Sessiond, session_id: str) -> session_pb2.Session | None:
    session = await sessiond.get(session_id)
    return session if session.state == FAILED else None


def _columns(header: str, line: str, names: Sequence[str]) -> dict[str, str]:
    """The cells of ``line`` under the given header columns (they are left-aligned at the header's offsets)."""
    starts = [header.index(name) for name in names]
    cells: dict[str, str] = {}
    for i, name in enumerate(names):
        end = starts[i + 1] if i + 1 < len(names) else len(line)
        cells[name] = line[starts[i]:end].strip()
    return cells


SESSION_COLUMNS = ("SESSION ID", "TASK QUEUE", "STATE", "WORKER", "HOST", "OWNER", "AGE", "FAILURE", "RESOURCES")
WORKER_COLUMNS = ("WORKER ID", "TASK QUEUE", "IDENTITY", "HOST", "SESSIONS", "DRAINING", "CONNECTED",
                  "LAST HEARTBEAT", "RESOURCES", "LABELS")


# --------------------------------------------------------------------- sessions list


@pytest.mark.asyncio
async def test_sessions_list_prints_an_aligned_table_of_every_session_oldest_first(fleet: Fleet) -> None:
    result = await cli("sessions", "list", "--address", fleet.address)

    assert result.code == 0, result.err
    header, *lines = result.out.splitlines()
    assert [c for c in SESSION_COLUMNS if c in header] == list(SESSION_COLUMNS)
    rows = [_columns(header, line, SESSION_COLUMNS) for line in lines]
    assert [r["SESSION ID"] for r in rows] == [
        fleet.open_a.session_id, fleet.closed_a.session_id, fleet.open_b.session_id, fleet.failed_c.session_id]
    assert [(r["TASK QUEUE"], r["STATE"], r["WORKER"], r["HOST"], r["OWNER"], r["FAILURE"]) for r in rows] == [
        ("ops-a", "OPEN", "wa", "host-a", "alice", "-"),
        ("ops-a", "CLOSED", "wa", "host-a", "bob", "-"),
        ("ops-b", "OPEN", "wb", "host-b", "-", "-"),
        ("ops-c", "FAILED", "wc", "host-c", "-", "WORKER_LOST"),
    ]
    # Ages are small and in seconds: every session was created moments ago.
    assert all(r["AGE"].endswith("s") and int(r["AGE"][:-1]) < 60 for r in rows)


@pytest.mark.asyncio
async def test_sessions_list_json_is_an_array_of_sessions_with_proto_field_names(fleet: Fleet) -> None:
    result = await cli("sessions", "list", "--address", fleet.address, "--json")

    assert result.code == 0, result.err
    listed = result.json()
    assert isinstance(listed, list) and len(listed) == 4
    by_id = {s["session_id"]: s for s in listed}
    assert by_id.keys() == fleet.by_id.keys()
    failed = by_id[fleet.failed_c.session_id]
    assert failed["state"] == "SESSION_STATE_FAILED"
    assert failed["failure"]["cause"] == "FAILURE_CAUSE_WORKER_LOST"
    assert failed["worker"] == {"worker_id": "wc", "identity": fleet.failed_c.worker.identity, "host_name": "host-c"}
    assert "close_time" in failed and "create_time" in failed and "recreate_token" in failed
    opened = by_id[fleet.open_a.session_id]
    assert (opened["state"], opened["owner"], opened["task_queue"]) == ("SESSION_STATE_OPEN", "alice", "ops-a")
    assert by_id[fleet.open_b.session_id]["owner"] == ""  # fields without presence are printed too


@pytest.mark.asyncio
@pytest.mark.parametrize(("flags", "expected"), [
    (("--task-queue", "ops-a"), ["open_a", "closed_a"]),
    (("--owner", "alice"), ["open_a"]),
    (("--state", "open"), ["open_a", "open_b"]),
    (("--state", "closed"), ["closed_a"]),
    (("--state", "failed"), ["failed_c"]),
    (("--task-queue", "ops-a", "--state", "open"), ["open_a"]),
    (("--task-queue", "ops-b", "--owner", "alice"), []),
    (("--limit", "3"), ["open_a", "closed_a", "open_b"]),
])
async def test_sessions_list_filters(fleet: Fleet, flags: tuple[str, ...], expected: list[str]) -> None:
    as_json = await cli("sessions", "list", "--address", fleet.address, "--json", *flags)
    as_table = await cli("sessions", "list", "--address", fleet.address, *flags)

    ids = [getattr(fleet, name).session_id for name in expected]
    assert as_json.code == 0 and as_table.code == 0, (as_json.err, as_table.err)
    assert [s["session_id"] for s in as_json.json()] == ids  # type: ignore[attr-defined]
    if ids:
        assert [line.split()[0] for line in as_table.rows()] == ids
    else:
        assert as_table.out == ""
        assert as_table.err == "No sessions found.\n"


@pytest.mark.asyncio
async def test_sessions_list_follows_every_page(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("wp", task_queue="ops-p", capacity=20)
    created = [(await sessiond.create("ops-p")).session_id for _ in range(7)]
    # The server really pages at this size: the first page of 2 has a next_page_token.
    first = await sessiond.stub.ListSessions(session_service_pb2.ListSessionsRequest(page_size=2))
    assert len(first.sessions) == 2 and first.next_page_token

    everything = await cli("sessions", "list", "--address", sessiond.target, "--page-size", "2", "--json")
    table = await cli("sessions", "list", "--address", sessiond.target, "--page-size", "3")
    limited = await cli("sessions", "list", "--address", sessiond.target, "--page-size", "2", "--limit", "5",
                        "--json")

    assert [s["session_id"] for s in everything.json()] == created  # type: ignore[attr-defined]
    assert [line.split()[0] for line in table.rows()] == created
    assert [s["session_id"] for s in limited.json()] == created[:5]  # type: ignore[attr-defined]


# --------------------------------------------------------------------- sessions get


@pytest.mark.asyncio
async def test_sessions_get_shows_one_session(fleet: Fleet) -> None:
    result = await cli("sessions", "get", fleet.failed_c.session_id, "--address", fleet.address)

    assert result.code == 0, result.err
    fields = dict(line.split(":", 1) for line in result.out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["Session ID"] == fleet.failed_c.session_id
    assert fields["State"] == "FAILED"
    assert fields["Failure"].startswith("WORKER_LOST")
    assert (fields["Worker"], fields["Host"], fields["Task queue"]) == ("wc", "host-c", "ops-c")
    assert fields["Closed"] != "-"
    assert fields["Heartbeat timeout"] == "20s"
    assert fields["Server incarnation"] == fleet.sessiond.server.engine.incarnation


@pytest.mark.asyncio
async def test_sessions_get_json_is_the_session_object(fleet: Fleet) -> None:
    result = await cli("sessions", "get", fleet.open_a.session_id, "--address", fleet.address, "--json")

    assert result.code == 0, result.err
    session = result.json()
    assert isinstance(session, dict)
    assert session["session_id"] == fleet.open_a.session_id
    assert (session["state"], session["owner"], session["worker"]["worker_id"]) == \
        ("SESSION_STATE_OPEN", "alice", "wa")
    assert session["options"]["heartbeat_timeout"] == "20s"


@pytest.mark.asyncio
async def test_sessions_get_of_an_unknown_id_says_not_found_and_exits_1(fleet: Fleet) -> None:
    result = await cli("sessions", "get", "no-such-session", "--address", fleet.address)

    assert result.code == 1
    assert result.out == ""
    assert result.err == "sessiond: NOT_FOUND (SESSION_NOT_FOUND): session 'no-such-session' not found\n"


# --------------------------------------------------------------------- workers list


@pytest.mark.asyncio
async def test_workers_list_shows_connected_workers_with_their_load(fleet: Fleet) -> None:
    table = await cli("workers", "list", "--address", fleet.address)
    as_json = await cli("workers", "list", "--address", fleet.address, "--json")
    only_b = await cli("workers", "list", "--address", fleet.address, "--task-queue", "ops-b", "--json")

    assert table.code == as_json.code == only_b.code == 0, (table.err, as_json.err, only_b.err)
    header, *lines = table.out.splitlines()
    rows = {r["WORKER ID"]: r for r in (_columns(header, line, WORKER_COLUMNS) for line in lines)}
    assert rows.keys() == {"wa", "wb"}  # wc's stream broke: it is no longer connected
    assert (rows["wa"]["TASK QUEUE"], rows["wa"]["IDENTITY"], rows["wa"]["HOST"], rows["wa"]["SESSIONS"],
            rows["wa"]["DRAINING"]) == ("ops-a", "1@host-a", "host-a", "1/10", "no")
    assert rows["wb"]["SESSIONS"] == "1/2"
    assert rows["wa"]["CONNECTED"].endswith(" ago") and rows["wa"]["LAST HEARTBEAT"].endswith(" ago")

    workers = {w["worker_id"]: w for w in as_json.json()}  # type: ignore[attr-defined]
    assert workers["wa"]["open_sessions"] == 1 and workers["wa"]["max_concurrent_sessions"] == 10
    assert workers["wb"]["task_queue"] == "ops-b" and workers["wb"]["draining"] is False
    assert [w["worker_id"] for w in only_b.json()] == ["wb"]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_workers_list_follows_every_page(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    for n in range(5):
        await make_worker(f"wp{n}", task_queue="ops-p")

    result = await cli("workers", "list", "--address", sessiond.target, "--page-size", "2", "--json")

    assert sorted(w["worker_id"] for w in result.json()) == [f"wp{n}" for n in range(5)]  # type: ignore[attr-defined]


# --------------------------------------------------------------------- connection and errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.asyncio
async def test_an_unreachable_server_is_a_clear_error_and_exit_1() -> None:
    address = f"127.0.0.1:{_closed_port()}"

    result = await cli("sessions", "list", "--address", address, "--timeout", "5")

    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith(f"sessiond: cannot reach the server at {address}: UNAVAILABLE")


@pytest.mark.asyncio
async def test_address_and_caller_token_come_from_flags_or_the_environment(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server(caller_token="s3cret")
    monkeypatch.setenv("SESSIOND_ADDRESS", server.target)
    monkeypatch.delenv("SESSIOND_CALLER_TOKEN", raising=False)

    anonymous = await cli("sessions", "list")
    wrong = await cli("workers", "list", "--token", "nope")
    flag = await cli("sessions", "list", "--token", "s3cret", "--json")
    monkeypatch.setenv("SESSIOND_CALLER_TOKEN", "s3cret")
    env = await cli("workers", "list", "--json")

    assert anonymous.code == 1 and anonymous.err.startswith("sessiond: UNAUTHENTICATED (UNAUTHENTICATED): ")
    assert wrong.code == 1 and "UNAUTHENTICATED" in wrong.err
    assert (flag.code, flag.json()) == (0, [])
    assert (env.code, env.json()) == (0, [])


@pytest.mark.asyncio
async def test_the_ops_commands_and_health_speak_mtls_with_a_token_file(
        make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "tokens").write_text("ops-token ops operator\nteam-a-token team-a caller\nworker-token w worker\n")
    (tmp_path / "ops.token").write_text("ops-token\n")
    (tmp_path / "team-a.token").write_text("team-a-token\n")
    server = await make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
                               tokens_file=tmp_path / "tokens")
    monkeypatch.setenv("SESSIOND_ADDRESS", server.target)
    monkeypatch.delenv("SESSIOND_CALLER_TOKEN", raising=False)
    tls = ("--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"))

    as_ops = await cli("workers", "list", "--json", "--token-file", str(tmp_path / "ops.token"), *tls)
    assert (as_ops.code, as_ops.json()) == (0, []), as_ops.err
    as_team = await cli("sessions", "list", "--json", "--token-file", str(tmp_path / "team-a.token"), *tls)
    assert (as_team.code, as_team.json()) == (0, [])
    # team-a's session: listed for team-a and for the operator (who can filter by principal).
    def mtls() -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(*((pki / name).read_bytes() for name in ("ca.pem", "client.key",
                                                                                       "client.pem")))

    worker = await RawWorker(server.target, "ops-q", worker_id="w-ops", capacity=2,
                             metadata=(("authorization", "Bearer worker-token"),), credentials=mtls()).start()
    try:
        async with grpc.aio.secure_channel(server.target, mtls()) as channel:
            created = await session_service_pb2_grpc.SessionServiceStub(channel).CreateSession(
                session_service_pb2.CreateSessionRequest(task_queue="ops-q"),
                metadata=(("authorization", "Bearer team-a-token"),))
        session_id = created.session.session_id
        for token, flags, expected in (("team-a", (), [session_id]), ("ops", (), [session_id]),
                                       ("ops", ("--principal", "team-a"), [session_id]),
                                       ("ops", ("--principal", "team-b"), [])):
            listed = await cli("sessions", "list", "--json", "--token-file", str(tmp_path / f"{token}.token"),
                               *flags, *tls)
            assert listed.code == 0, listed.err
            assert [s["session_id"] for s in listed.json()] == expected, (token, flags)  # type: ignore[attr-defined]
        shown = await cli("sessions", "get", session_id, "--token-file", str(tmp_path / "ops.token"), *tls)
        assert "Principal:" in shown.out and "team-a" in shown.out.split("Principal:", 1)[1].splitlines()[0]
    finally:
        await worker.stop()
    no_certificate = await cli("workers", "list", "--token-file", str(tmp_path / "ops.token"),
                               "--tls-ca", str(pki / "ca.pem"), "--timeout", "5")
    assert no_certificate.code == 1 and "UNAVAILABLE" in no_certificate.err
    no_token = await cli("workers", "list", *tls)
    assert no_token.code == 1 and "UNAUTHENTICATED" in no_token.err
    half = await cli("workers", "list", "--tls-cert", str(pki / "client.pem"))
    assert half.code == 1 and "--tls-cert and --tls-key go together" in half.err
    missing = await cli("workers", "list", "--token-file", str(tmp_path / "nope"), *tls)
    assert missing.code == 1 and "--token-file" in missing.err

    healthy = await cli("health", *tls)  # the address from SESSIOND_ADDRESS, no token needed
    assert healthy.code == 0 and healthy.out.strip() == "SERVING", healthy.err
    plaintext = await cli("health", "--timeout", "2")
    assert plaintext.code == 1 and "unhealthy" in plaintext.err


@pytest.mark.asyncio
async def test_bad_flags_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as caught:
        await cli("sessions", "list", "--state", "sleeping")
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        await cli("sessions", "list", "--limit", "0")
    assert caught.value.code == 2


@pytest.mark.asyncio
async def test_the_installed_command_lists_sessions_and_fails_on_unknown_ids(fleet: Fleet) -> None:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "SESSIOND_ADDRESS": fleet.address}
    env.pop("SESSIOND_CALLER_TOKEN", None)

    async def sessiond_command(*argv: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiond", *argv, cwd=REPO_ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await sessiond_command("sessions", "list", "--state", "open", "--json")
    assert code == 0, err
    assert [s["session_id"] for s in json.loads(out)] == [fleet.open_a.session_id, fleet.open_b.session_id]

    code, out, err = await sessiond_command("sessions", "get", "deadbeef")
    assert (code, out) == (1, "")
    assert "NOT_FOUND" in err and "deadbeef" in err


def test_ages_are_printed_compactly_at_each_unit_boundary() -> None:
    from google.protobuf import timestamp_pb2

    from sessiond.ops import _age

    now = 1_000_000.0
    stamp = timestamp_pb2.Timestamp(seconds=int(now))
    cases = {0: "0s", 59: "59s", 60: "1m00s", 3599: "59m59s", 3600: "1h00m",
             int(timedelta(days=1).total_seconds()) + 3600: "1d01h"}
    assert {delta: _age(stamp, now + delta) for delta in cases} == cases
    assert _age(timestamp_pb2.Timestamp(), now) == "-"


# --------------------------------------------------------------------- resources and selectors


@pytest.mark.asyncio
async def test_workers_list_shows_resources_and_labels_and_filters_by_selector(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("g1", task_queue="ops-g", capacity=4, capacities={"gpu": 2, "scratch_gb": 500},
                      labels={"zone": "a", "gpu_model": "h100"})
    await make_worker("g2", task_queue="ops-g", capacity=4, capacities={"gpu": 1}, labels={"zone": "b"})
    held = await sessiond.create("ops-g", options=session_pb2.SessionOptions(
        resources={"gpu": 2, "scratch_gb": 100}, selector="zone=a"))

    table = await cli("workers", "list", "--address", sessiond.target)
    in_a = await cli("workers", "list", "--address", sessiond.target, "--selector", "zone in (a), gpu_model", "--json")
    bad = io.StringIO()
    with pytest.raises(SystemExit) as caught, contextlib.redirect_stderr(bad):
        main(["workers", "list", "--address", sessiond.target, "--selector", "zone!=a"])

    assert table.code == in_a.code == 0, (table.err, in_a.err)
    header, *lines = table.out.splitlines()
    rows = {r["WORKER ID"]: r for r in (_columns(header, line, WORKER_COLUMNS) for line in lines)}
    assert (rows["g1"]["RESOURCES"], rows["g1"]["LABELS"], rows["g1"]["SESSIONS"]) == (
        "gpu 2/2, scratch_gb 100/500", "gpu_model=h100,zone=a", "1/4")
    assert (rows["g2"]["RESOURCES"], rows["g2"]["LABELS"]) == ("gpu 0/1", "zone=b")
    (only,) = in_a.json()  # type: ignore[misc]
    assert only["worker_id"] == "g1" and only["used"] == {"sessions": "1", "gpu": "2", "scratch_gb": "100"}
    assert caught.value.code == 2
    assert "selector expected '=', 'in (...)', ',' or the end at offset 4" in bad.getvalue()

    sessions = await cli("sessions", "list", "--address", sessiond.target, "--resource", "gpu")
    header, *lines = sessions.out.splitlines()
    (row,) = [_columns(header, line, SESSION_COLUMNS) for line in lines]
    assert row["SESSION ID"] == held.session_id and row["RESOURCES"] == "gpu=2,scratch_gb=100"
    shown = await cli("sessions", "get", held.session_id, "--address", sessiond.target)
    assert "Resources:" in shown.out and "gpu=2,scratch_gb=100,sessions=1" in shown.out
    assert "zone=a" in shown.out


@pytest.mark.asyncio
async def test_workers_waiting_says_why_a_create_cannot_be_placed(sessiond: Sessiond,
                                                                  make_worker: WorkerFactory) -> None:
    await make_worker("g1", task_queue="ops-w", capacity=4, capacities={"gpu": 1}, labels={"zone": "a"})
    stuck = asyncio.create_task(sessiond.create("ops-w", options=session_pb2.SessionOptions(
        resources={"gpu": 4})))
    try:
        await eventually(lambda: sessiond.waiting == 1 or None)
        table = await cli("workers", "waiting", "--address", sessiond.target)
        as_json = await cli("workers", "waiting", "--address", sessiond.target, "--json")
        listing = await cli("workers", "list", "--address", sessiond.target)
    finally:
        stuck.cancel()
    header, *lines = table.out.splitlines()
    names = ("TASK QUEUE", "WAITING", "OLDEST", "ASKS FOR", "SELECTOR", "WHY IT CANNOT BE PLACED")
    (row,) = [_columns(header, line, names) for line in lines]
    assert (row["TASK QUEUE"], row["WAITING"], row["ASKS FOR"], row["SELECTOR"]) == ("ops-w", "1", "gpu=4", "-")
    assert row["WHY IT CANNOT BE PLACED"] == \
        "no connected worker of task queue 'ops-w' has the capacity for gpu=4 (largest: 1)"
    (kind,) = as_json.json()  # type: ignore[misc]
    assert kind["unplaceable_reason"] == row["WHY IT CANNOT BE PLACED"]
    assert "1 waiting create cannot be placed on any connected worker" in listing.err
    assert "cannot be placed" not in listing.out
