"""The fault tests' server process (:class:`tests.integration.faults.ServerProcess`) on a shared
machine: a free port another program takes before the server binds it is not the server's."""

from __future__ import annotations

import os
import socket

import pytest

from sessiond.testing.ports import listening
from tests.integration.faults import ServerProcess

pytestmark = pytest.mark.asyncio


async def test_a_server_whose_port_was_taken_starts_on_another_and_is_the_one_listening() -> None:
    server = ServerProcess()
    taken = server.port
    with socket.socket() as squatter:  # another program listens there first (and answers connects)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            await server.start()
            assert server.port != taken
            assert server.process is not None and listening(server.process.pid, server.port)
            assert not listening(server.process.pid, taken)
        finally:
            log = await server.stop()
    assert "is in use" not in log  # the log is the last start's, on the port it got


async def test_listening_names_only_the_process_holding_the_socket() -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        port = mine.getsockname()[1]
        assert not listening(os.getpid(), port)  # bound, not listening
        mine.listen()
        assert listening(os.getpid(), port)
        assert not listening(os.getppid(), port)


async def test_a_server_whose_dashboard_port_was_taken_starts_again_on_two_new_ports() -> None:
    server = ServerProcess(ui=True)
    taken = server.ui_port
    assert taken is not None
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            await server.start()
            assert server.ui_port is not None and server.ui_port != taken
            assert server.process is not None
            assert listening(server.process.pid, server.port) and listening(server.process.pid, server.ui_port)
        finally:
            log = await server.stop()
    assert "in use" not in log and f"dashboard on http://127.0.0.1:{server.ui_port}/" in log
