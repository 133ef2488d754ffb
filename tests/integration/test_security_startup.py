"""Security settings as an operator meets them on a real ``sessiond serve`` process: refusals at
start (one line, exit 2), the WARNINGs for what is left open, and SIGHUP reloading the credential
files without dropping a stream."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from tests.integration.conftest import eventually
from tests.integration.faults import ServerProcess
from tests.integration.rawworker import RawWorker
from tests.integration.test_server_startup import _assert_one_line_exit_2, _run_serve_on_a_free_port
from tests.support.pki import make_pki

pytestmark = pytest.mark.asyncio

KEY = "a-key-of-at-least-32-bytes-0123456789"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = make_pki(tmp_path_factory.mktemp("security-startup"))
    out = {"cert": directory / "server.pem", "key": directory / "server.key", "ca": directory / "ca.pem"}
    for name, text in {
        "tokens": "t-worker w worker\nt-caller c caller\nt-ops ops operator\n",
        "empty": "",
        "comments-only": "# nobody yet\n\n",
        "bad-role": "t-1 someone admin\n",
        "two-fields": "t-1 someone\n",
        "twice": "t-1 a caller\nt-1 b caller\n",
        "bad-hash": "sha256:abcd p caller\n",
        "bad-principal": "t-1 team\u0085a caller\n",
        "escape-in-principal": "t-1 \x1b[31mred caller\n",
        "roles": "worker.example worker\n",
        "token": "t-from-a-file\n",
        "blank-token": "\n\n",
        "short-key": "too-short\n",
        "tokenkey": KEY + "\n",
    }.items():
        (directory / name).write_text(text)
        out[name] = directory / name
    return out


REFUSALS: dict[str, tuple[tuple[str, ...], dict[str, str], str]] = {
    "empty-caller-token-flag": (("--caller-token", ""), {}, "caller_token"),
    "empty-caller-token-variable": ((), {"SESSIOND_CALLER_TOKEN": ""}, "SESSIOND_CALLER_TOKEN is set but empty"),
    "empty-worker-token-variable": ((), {"SESSIOND_WORKER_TOKEN": ""}, "SESSIOND_WORKER_TOKEN"),
    "empty-token-key-variable": ((), {"SESSIOND_TOKEN_KEY": ""}, "SESSIOND_TOKEN_KEY"),
    "empty-token-file": (("--caller-token-file", "{blank-token}"), {}, "caller_token_file"),
    "missing-token-file": (("--worker-token-file", "/nonexistent/token"), {}, "worker_token_file"),
    "token-and-token-file": (("--caller-token", "x", "--caller-token-file", "{token}"), {}, "not both"),
    "same-token-for-both-roles": (("--caller-token", "same", "--worker-token", "same"), {}, "differ"),
    "tokens-file-missing": (("--tokens-file", "/nonexistent/tokens"), {}, "tokens_file"),
    "tokens-file-empty": (("--tokens-file", "{empty}"), {}, "holds no tokens"),
    "tokens-file-comments-only": (("--tokens-file", "{comments-only}"), {}, "holds no tokens"),
    "tokens-file-unknown-role": (("--tokens-file", "{bad-role}"), {}, "unknown role 'admin'"),
    "tokens-file-missing-field": (("--tokens-file", "{two-fields}"), {}, ":1: expected"),
    "tokens-file-token-twice": (("--tokens-file", "{twice}"), {}, ":2: this token is listed twice"),
    "tokens-file-bad-hash": (("--tokens-file", "{bad-hash}"), {}, "64 hex digits"),
    "tokens-file-line-separator": (("--tokens-file", "{bad-principal}"), {}, "control characters"),
    "tokens-file-escape-sequence": (("--tokens-file", "{escape-in-principal}"), {}, "control characters"),
    "tokens-file-and-caller-token-share-a-token": (("--tokens-file", "{tokens}", "--caller-token", "t-ops"), {},
                                                   "holds the worker or caller token"),
    "client-roles-without-mtls": (("--tls-client-roles", "{roles}"), {}, "tls_client_ca"),
    "token-key-too-short": (("--token-key-file", "{short-key}"), {}, "at least 32 bytes"),
    "token-key-file-missing": (("--token-key-file", "/nonexistent/key"), {}, "token_key_file"),
    "previous-key-without-a-current-one": (("--previous-token-key-file", "{tokenkey}"), {}, "needs the current"),
    "reflection-unknown-mode": (("--reflection", "sometimes"), {}, "reflection"),
}


@pytest.mark.parametrize("case", list(REFUSALS.values()), ids=list(REFUSALS))
async def test_a_security_mistake_at_start_is_one_line_and_exit_code_2(
        case: tuple[tuple[str, ...], dict[str, str], str], files: dict[str, Path]) -> None:
    args, env, says = case
    code, err = await _run_serve_on_a_free_port(*(a.format(**{k: str(v) for k, v in files.items()}) for a in args),
                                                env=env)
    _assert_one_line_exit_2(code, err, says)


# --------------------------------------------------------------------- warnings at start


async def _start_lines(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """Start ``sessiond serve``, return its stderr lines up to "serving", then stop it."""
    server = ServerProcess(*args, env=env)
    try:
        await server.start()  # its own listener on the port: it logs "serving on" next
        await eventually(lambda: any("sessiond serving on" in line for line in server.lines), timeout=30,
                         message="the server logged that it is serving")
    finally:
        await server.stop()
    lines = server.lines
    return lines[:next(i for i, line in enumerate(lines) if "sessiond serving on" in line) + 1]


def _warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if " WARNING " in line]


async def test_no_credentials_is_one_warning_that_everything_is_open_and_one_for_the_key() -> None:
    warnings = _warnings(await _start_lines())
    assert len(warnings) == 2, warnings
    assert "no credentials configured" in warnings[0] and "create, list and complete every session" in warnings[0]
    assert "no --token-key-file" in warnings[1] and "recreate tokens do not survive a restart" in warnings[1]


async def test_an_unprotected_role_and_tokens_on_a_plaintext_port_are_warnings(files: dict[str, Path]) -> None:
    warnings = _warnings(await _start_lines("--worker-token-file", str(files["token"]),
                                            "--token-key-file", str(files["tokenkey"])))
    assert len(warnings) == 2, warnings
    assert "caller and operator roles are not protected" in warnings[0]
    assert "plaintext port" in warnings[1]
    warnings = _warnings(await _start_lines("--caller-token-file", str(files["token"]),
                                            "--token-key-file", str(files["tokenkey"])))
    assert any("worker role is not protected" in w for w in warnings), warnings


async def test_a_fully_protected_server_starts_without_a_warning(files: dict[str, Path]) -> None:
    lines = await _start_lines("--tokens-file", str(files["tokens"]), "--tls-cert", str(files["cert"]),
                               "--tls-key", str(files["key"]), env={"SESSIOND_TOKEN_KEY": KEY})
    assert _warnings(lines) == [], lines


async def test_a_secret_on_the_command_line_is_a_warning(files: dict[str, Path]) -> None:
    warnings = _warnings(await _start_lines("--caller-token", "visible-in-ps", "--worker-token-file",
                                            str(files["token"]), "--token-key-file", str(files["tokenkey"])))
    assert any("--caller-token was given on the command line" in w and "--caller-token-file" in w
               for w in warnings), warnings


# --------------------------------------------------------------------- SIGHUP


@pytest_asyncio.fixture
async def reloadable(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, Path]]:
    """A sessiond process with a tokens file, serving; (the server, the file)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("t-worker workers worker\nt-a team-a caller\nt-ops ops operator\n")
    server = ServerProcess("--tokens-file", str(tokens), "--recovery-window", "0", "--shutdown-grace", "1")
    try:
        await server.start()
        await eventually(lambda: any("sessiond serving on" in line for line in server.lines), timeout=30)
        yield server, tokens
    finally:
        await server.stop()


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_sighup_reloads_the_tokens_file_without_dropping_streams(
        reloadable: tuple[ServerProcess, Path]) -> None:
    server, tokens = reloadable
    address = server.target
    worker = await RawWorker(address, "q", worker_id="w1", capacity=4, metadata=_as("t-worker")).start()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        session = (await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue="q"),
                                            metadata=_as("t-a"))).session
        watch = stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session.session_id),
                                  metadata=_as("t-a"))
        first = await watch.read()
        assert first.session.state == session_pb2.SESSION_STATE_OPEN

        # Revoke team-a's token, add team-b's, rotate the worker token.
        tokens.write_text("t-worker-2 workers worker\nt-b team-b caller\nt-ops ops operator\n")
        server.signal(signal.SIGHUP)
        await eventually(lambda: any("credentials reloaded" in line for line in server.lines), timeout=10)
        list_sessions = session_service_pb2.ListSessionsRequest()
        assert await _code(stub.ListSessions(list_sessions, metadata=_as("t-a"))) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(stub.ListSessions(list_sessions, metadata=_as("t-b"))) == grpc.StatusCode.OK

        # The worker's stream and team-a's watch opened before the reload carry on: a new session
        # still lands on the worker, and the watch sees the operator complete team-a's session.
        placed = (await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue="q"),
                                           metadata=_as("t-b"))).session
        await eventually(lambda: placed.session_id in worker.held)
        await stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=session.session_id),
                                   metadata=_as("t-ops"))
        last = await watch.read()
        assert last.session.state == session_pb2.SESSION_STATE_CLOSED
        assert not worker.stream_done.is_set()

        # A bad file on reload: one ERROR line, and the credentials in force stay.
        tokens.write_text("t-c team-c admin\n")
        server.signal(signal.SIGHUP)
        await eventually(lambda: any(" ERROR " in line for line in server.lines), timeout=10)
        errors = [line for line in server.lines if " ERROR " in line]
        assert len(errors) == 1 and "unknown role 'admin'" in errors[0] and "stay in force" in errors[0], errors
        assert await _code(stub.ListSessions(list_sessions, metadata=_as("t-b"))) == grpc.StatusCode.OK
        assert not worker.stream_done.is_set() and server.process is not None and server.process.returncode is None
    await worker.stop()
