"""``sessiond serve --ui-listen`` as a user runs it: the flag and the variable, start-up errors as one
line with exit code 2, garbage from a peer answered without a traceback, SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import aiohttp
import pytest

from sessiond.config import ServerConfig
from tests.integration.conftest import eventually
from tests.integration.faults import ServerProcess
from tests.integration.test_server_startup import _run_serve_on_a_free_port
from tests.ui.conftest import Dash

QUIET = {"GRPC_VERBOSITY": "ERROR"}


@pytest.mark.asyncio
@pytest.mark.parametrize("address", ["8080", "localhost", "127.0.0.1:http", "127.0.0.1:70000", ":8080"])
async def test_a_malformed_ui_listen_is_one_line_and_exit_code_2(address: str) -> None:
    code, err = await _run_serve_on_a_free_port("--ui-listen", address, env=QUIET)

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "ui_listen" in lines[0], err


@pytest.mark.asyncio
async def test_a_dashboard_port_in_use_is_one_line_and_exit_code_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, text = await _run_serve_on_a_free_port("--ui-listen", f"127.0.0.1:{port}", env=QUIET)

    assert code == 2
    assert "Traceback" not in text, text
    assert [line for line in text.splitlines() if line.startswith("sessiond:")] == [
        f"sessiond: dashboard: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.asyncio
async def test_the_environment_variable_turns_the_dashboard_on_and_sigterm_stops_it(
        http: aiohttp.ClientSession) -> None:
    server = ServerProcess(ui=True)  # SESSIOND_UI_LISTEN=127.0.0.1:<a free port>
    try:
        await server.start()  # the process itself listens on both ports
        assert server.ui_port is not None
        dash = Dash(http, f"http://127.0.0.1:{server.ui_port}")

        async def up() -> bool:
            try:
                return (await dash.request("GET", "/api/v1/overview")).status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(up, timeout=30, interval=0.1)
        server.signal(signal.SIGTERM)
        code, err = await asyncio.wait_for(server.wait(), 20)
        assert code == 0, err
        assert "Traceback" not in err
        assert f"dashboard on http://127.0.0.1:{server.ui_port}/" in err
    finally:
        await server.stop()


def test_ui_listen_is_validated_when_the_config_is_made() -> None:
    assert ServerConfig(ui_listen="[::1]:0").ui_listen == "[::1]:0"
    with pytest.raises(ValueError, match="ui_listen"):
        ServerConfig(ui_listen="no-port")


@pytest.mark.asyncio
async def test_garbage_from_a_peer_is_a_400_and_at_most_one_warning_without_traceback(
        dash: Dash, caplog: pytest.LogCaptureFixture) -> None:
    host, port = dash.base.removeprefix("http://").rsplit(":", 1)
    with caplog.at_level(logging.WARNING):
        for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
                        b"GET / HTTP/1.1\r\nHost: " + b"x" * 20_000 + b"\r\n\r\n",  # an over-long header
                        b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n",
                        b"NOT-HTTP\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(garbage)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 10)
            writer.close()
            assert answer[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400", b"HTTP/1.1 431"), answer

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1 and all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings), [
        (r.levelname, r.getMessage()) for r in warnings]
    assert (await dash.request("GET", "/api/v1/overview")).status == 200, "still serving"
