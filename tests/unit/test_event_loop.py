"""The event-loop choice: asyncio by default, uvloop on request, anything else refused."""

from __future__ import annotations

import asyncio

import pytest

from sessiond import event_loop
from sessiond.config import ServerConfig


def test_asyncio_is_the_default_and_uses_asyncios_own_loop() -> None:
    assert ServerConfig().loop == "asyncio"
    assert event_loop.loop_factory("asyncio") is None


def test_uvloop_runs_a_coroutine_on_a_uvloop_loop() -> None:
    import uvloop

    async def which() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert event_loop.run(which(), "uvloop") is uvloop.Loop
    assert event_loop.run(which(), "asyncio") is not uvloop.Loop


def test_an_unknown_loop_is_refused_by_the_config_and_by_the_factory() -> None:
    with pytest.raises(ValueError, match="loop must be asyncio or uvloop"):
        ServerConfig(loop="tokio")
    with pytest.raises(ValueError, match="loop must be one of asyncio, uvloop"):
        event_loop.loop_factory("tokio")


def test_a_missing_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'sessiond\[uvloop\]'"):
        event_loop.loop_factory("uvloop")
