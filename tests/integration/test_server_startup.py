"""Starting ``sessiond serve`` wrong: every start-up error is one line on stderr and exit code 2.

Also: a port already in use is refused (no SO_REUSEPORT), durations take the forms ``--help``
prints, and a client holding ``Health/Watch`` through SIGTERM leaves no traceback behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessiond.testing.ports import free_port
from tests.integration.conftest import REPO_ROOT, ServerFactory, eventually
from tests.integration.faults import ServerProcess
from tests.support.pki import make_pki

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("GRPC_VERBOSITY", None)  # as a user runs it: grpc core at its default verbosity


@dataclass(frozen=True)
class Startup:
    """A way to start the server wrong, and a word the one error line must contain."""

    args: tuple[str, ...]
    says: str
    env: dict[str, str] = field(default_factory=dict)


async def _run_serve(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", "serve", *args, cwd=REPO_ROOT, env={**ENV, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError(f"sessiond serve {args} did not exit (it started?)") from None
    assert process.returncode is not None
    return process.returncode, err.decode()


async def _run_serve_on_a_free_port(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """:func:`_run_serve` with ``--listen`` on a free port, for a start meant to fail for another reason.
    The port was only free a moment ago: when another program took it first (the server says so),
    run again on a new one, so the error read is the one the test means."""
    for _ in range(5):
        port = free_port()
        code, err = await _run_serve(*args, "--listen", f"127.0.0.1:{port}", env=env)
        if f"listen 127.0.0.1:{port}: port {port} is in use" not in err:
            return code, err
    raise AssertionError("the free port was taken 5 times")


def _assert_one_line_exit_2(code: int, err: str, says: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert code == 2, f"exit code {code}: {err}"
    assert lines[0].startswith("sessiond"), lines[0]
    assert says.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificate files: a valid pair, a second key, garbage, an empty file."""
    directory = make_pki(tmp_path_factory.mktemp("startup-pem"))
    garbage = directory / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    empty = directory / "empty.pem"
    empty.write_bytes(b"")
    return {"server_cert": directory / "server.pem", "server_key": directory / "server.key",
            "client_key": directory / "client.key", "garbage": garbage, "empty": empty}


CASES: dict[str, Startup] = {
    "listen-not-an-address": Startup(("--listen", "nonsense"), "listen"),
    "listen-port-out-of-range": Startup(("--listen", "127.0.0.1:99999"), "listen"),
    "listen-port-not-a-number": Startup(("--listen", "127.0.0.1:http"), "listen"),
    "listen-unknown-host": Startup(("--listen", "no-such-host.invalid:50051"), "listen"),
    "listen-address-not-on-this-machine": Startup(("--listen", "192.0.2.1:50051"), "listen"),
    "tls-files-missing": Startup(("--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"),
                                 "tls_cert"),
    "tls-cert-without-key": Startup(("--tls-cert", "{server_cert}"), "tls_key"),
    "tls-cert-garbage": Startup(("--tls-cert", "{garbage}", "--tls-key", "{server_key}"), "tls_cert"),
    "tls-key-garbage": Startup(("--tls-cert", "{server_cert}", "--tls-key", "{garbage}"), "tls_key"),
    "tls-key-empty": Startup(("--tls-cert", "{server_cert}", "--tls-key", "{empty}"), "tls_key"),
    "tls-key-of-another-certificate": Startup(("--tls-cert", "{server_cert}", "--tls-key", "{client_key}"),
                                              "match"),
    "tls-client-ca-garbage": Startup(("--tls-cert", "{server_cert}", "--tls-key", "{server_key}",
                                      "--tls-client-ca", "{garbage}"), "tls_client_ca"),
    "tls-client-ca-missing": Startup(("--tls-cert", "{server_cert}", "--tls-key", "{server_key}",
                                      "--tls-client-ca", "/nonexistent/ca.pem"), "tls_client_ca"),
    "unknown-trace-exporter": Startup((), "OTEL_TRACES_EXPORTER", {"OTEL_TRACES_EXPORTER": "zipkinn"}),
    "unknown-metrics-exporter": Startup((), "OTEL_METRICS_EXPORTER", {"OTEL_METRICS_EXPORTER": "prometheus"}),
    "metrics-listen-not-an-address": Startup(("--metrics-listen", "nonsense"), "metrics_listen"),
    "duration-not-a-duration": Startup(("--retention", "ten minutes"), "retention"),
    "duration-unknown-unit": Startup(("--retention", "10 fortnights"), "retention"),
    "duration-negative": Startup(("--retention=-5s",), "invalid duration"),
    "duration-infinite": Startup(("--shutdown-grace", "inf"), "shutdown-grace"),
    "duration-nan": Startup(("--heartbeat-timeout", "nan"), "heartbeat-timeout"),
    "duration-overflows": Startup(("--execution-timeout", "1e400"), "execution-timeout"),
    "duration-too-large-for-timedelta": Startup(("--execution-timeout", "99999999999h"), "too large"),
    "duration-from-the-environment": Startup((), "SESSIOND_RETENTION", {"SESSIOND_RETENTION": "soon"}),
    "integer-too-large": Startup(("--max-pending-requests", "99999999999999"), "max_pending_requests"),
    "empty-token": Startup(("--caller-token", ""), "caller_token"),
    "token-with-a-newline": Startup(("--worker-token", "abc\ndef"), "worker_token"),
    "unknown-log-level": Startup(("--log-level", "LOUD"), "log_level"),
    "unknown-flag": Startup(("--no-such-flag", "1"), "no-such-flag"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_a_startup_error_is_one_line_and_exit_code_2(case: Startup, pem: dict[str, Path]) -> None:
    args = [arg.format(**pem) for arg in case.args]
    if "--listen" in args:
        code, err = await _run_serve(*args, env=case.env)
    else:  # a mistake elsewhere must not start a server
        code, err = await _run_serve_on_a_free_port(*args, env=case.env)

    _assert_one_line_exit_2(code, err, case.says)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[ServerProcess]:
    """A sessiond process listening on a free port (its own listener), SERVING. Killed at teardown."""
    server = await ServerProcess("--shutdown-grace", "1").start()
    try:
        await eventually(lambda: _serving(server.target), timeout=30, interval=0.1)
        yield server
    finally:
        await server.stop()


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.asyncio
async def test_a_second_server_on_a_port_in_use_exits_2_saying_so(running: ServerProcess) -> None:
    code, err = await _run_serve("--listen", running.target)

    _assert_one_line_exit_2(code, err, "in use")
    assert await _serving(running.target), "the first server kept serving"
    assert running.process is not None and running.process.returncode is None


@pytest.mark.asyncio
async def test_durations_take_the_forms_help_prints_and_the_server_starts() -> None:
    server = ServerProcess("--retention", "600s", "--creation-timeout", "10m", "--heartbeat-timeout", "1.5",
                           "--shutdown-grace", "250ms", "--drain-timeout", "2s", "--execution-timeout", "2h",
                           "--activity-timeout", "1m30s")
    try:
        await server.start()
        await eventually(lambda: _serving(server.target), timeout=30, interval=0.1)
    finally:
        if server.process is not None and server.process.returncode is None:
            server.signal(signal.SIGTERM)
        code, err = await asyncio.wait_for(server.wait(), 30)
    assert code == 0, err


@pytest.mark.asyncio
async def test_every_duration_default_in_help_is_accepted_back() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", "serve", "--help", cwd=REPO_ROOT, env=ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    text = " ".join(out.decode().split())
    defaults = re.findall(r"--([a-z-]+) [A-Z_]+ .*?default ([^\]]+)\]", text)
    durations = {flag: value for flag, value in defaults if flag.endswith(("timeout", "retention", "interval",
                                                                            "grace", "window"))}
    assert len(durations) == 11, durations

    from sessiond.config import ServerConfig, parse_field

    for flag, value in durations.items():
        name = flag.replace("-", "_")
        assert parse_field(name, value) == getattr(ServerConfig(), name), (flag, value)


@pytest.mark.asyncio
async def test_a_health_watch_held_through_sigterm_leaves_no_traceback(running: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(running.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        running.signal(signal.SIGTERM)
        # Hold the stream, unread, until the server process has exited.
        code, err = await asyncio.wait_for(running.wait(), 30)

        watch.cancel()
    assert code == 0, err
    assert "Traceback" not in err and " ERROR " not in err, err


@pytest.mark.asyncio
async def test_a_health_watch_is_told_not_serving_then_ends_well_before_the_grace_period(
        make_server: ServerFactory) -> None:
    server = await make_server(shutdown_grace=timedelta(seconds=30))
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    loop = asyncio.get_running_loop()
    started = loop.time()

    stopping = asyncio.create_task(server.server.stop())
    seen = [message.status async for message in _rest(watch)]

    assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert await watch.code() == grpc.StatusCode.OK
    await asyncio.wait_for(stopping, 10)  # nothing held the 30 s grace period
    assert loop.time() - started < 10


async def _rest(call: Any) -> AsyncIterator[Any]:
    while (message := await call.read()) is not grpc.aio.EOF:
        yield message
