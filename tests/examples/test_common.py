"""The demos' server start (``examples.common.start_sessiond``) on a shared machine: a port another
program takes before sessiond binds it is not sessiond's, so the demo starts it again elsewhere."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import examples.common
from examples.common import start_sessiond
from sessiond.testing.ports import free_port, listening

ROOT = Path(__file__).resolve().parents[2]


def test_a_server_whose_port_was_taken_starts_on_another_and_is_the_one_listening(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as squatter:  # another program listens on the first port the demo picks
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picked: list[int] = []

        def first_the_taken_one() -> int:  # then free ports as usual
            picked.append(taken if not picked else free_port())
            return picked[-1]

        monkeypatch.setattr(examples.common, "free_port", first_the_taken_one)

        server, target = start_sessiond(env={**os.environ, "GRPC_VERBOSITY": "ERROR"}, cwd=ROOT)
        try:
            assert picked[0] == taken and target == f"127.0.0.1:{picked[-1]}" and len(picked) >= 2
            assert listening(server.pid, int(target.rsplit(":", 1)[1]))
            assert server.poll() is None
        finally:
            server.kill()
            server.wait()
    assert "in use" not in capfd.readouterr().err  # the lost start is retried quietly
