"""The type hints of an activity function: its parameters (the worker decodes arguments by them)
and its return type (the caller decodes the result by it when it passes the function).

Read once per function and cached; a function whose annotations cannot be resolved (a forward
reference to a name that does not exist at run time) is treated as unannotated.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True, slots=True)
class ActivityHints:
    """What an activity's annotations say about its arguments and result (``None`` = unknown)."""

    params: tuple[Any, ...] | None
    """The hints of the positional parameters, in order (a missing annotation is ``None``)."""
    result: Any
    """The declared return type (for ``async def``: what the coroutine returns)."""


_UNKNOWN = ActivityHints(None, None)


def activity_hints(fn: Callable[..., Any]) -> ActivityHints:
    """The hints of ``fn`` (cached per function; never raises)."""
    try:
        return _cached(fn)
    except TypeError:  # unhashable callable
        return _read(fn)


@functools.lru_cache(maxsize=1024)
def _cached(fn: Callable[..., Any]) -> ActivityHints:
    return _read(fn)


def _read(fn: Callable[..., Any]) -> ActivityHints:
    target: Any = fn
    if not (inspect.isroutine(fn) or inspect.isclass(fn)) and callable(fn):
        target = type(fn).__call__  # an instance with __call__: its method, bound below
    try:
        hints = typing.get_type_hints(target)
        signature = inspect.signature(fn)
    except Exception:  # unresolvable annotations, builtins without a signature
        return _UNKNOWN
    params = tuple(hints.get(p.name) for p in signature.parameters.values() if p.kind in _POSITIONAL)
    return ActivityHints(params, hints.get("return"))
