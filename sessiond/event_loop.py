"""The event loop a sessiond process runs on: asyncio's own (the default) or uvloop (opt-in).

uvloop is an optional dependency (``pip install 'sessiond[uvloop]'``); grpc.aio 1.85 runs on it
(its completion queue is polled from a thread that wakes the loop, whatever the loop is). What it
buys on this service is measured in bench/RESULTS.md (the ``activity`` scenario with ``--loops uvloop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOPS = ("asyncio", "uvloop")

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the named loop (None: asyncio's default).

    Raises:
        ValueError: An unknown name, or uvloop asked for and not installed (one line for the operator).
    """
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ValueError("loop uvloop: uvloop is not installed (pip install 'sessiond[uvloop]')") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """``asyncio.run(main)`` on the named loop."""
    try:
        factory = loop_factory(loop)
    except ValueError:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


__all__ = ["LOOPS", "loop_factory", "run"]
