"""Request validation: every malformed field becomes INVALID_ARGUMENT naming the field.

Functions here turn wire values into core values (seconds as floats, resolved options) and
raise :class:`~sessiond.core.errors.InvalidArgumentError` otherwise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping

from google.protobuf import duration_pb2
from sessiond_client.api.v1 import session_pb2

from sessiond.config import ServerConfig
from sessiond.core.errors import InvalidArgumentError, InvalidRecreateTokenError
from sessiond.core.model import SessionOptions, SessionState, WorkerKey
from sessiond.core.names import name_problem
from sessiond.core.resources import SESSIONS, ResourceVector
from sessiond.core.selector import EVERYTHING, Selector, SelectorError, parse_selector, shown
from sessiond.core.selector import name_problem as label_problem

MAX_TOKEN_BYTES = 4096
MAX_DURATION = 366 * 24 * 3600.0
MIN_HEARTBEAT_TIMEOUT = 0.1
MAX_SESSIONS_PER_WORKER = 1_000_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Resources and labels (SPEC §6.3): bounds on what a worker declares and a session asks for.
MAX_AMOUNT = 10**12
MAX_RESOURCES = 32
MAX_LABELS = 32


def name(value: str, field: str, *, required: bool) -> str:
    """A name (see :mod:`sessiond.core.names`): non-empty when required, at most 256 UTF-8 bytes,
    no control characters."""
    if required and not value:
        raise InvalidArgumentError(field, "is required")
    problem = name_problem(value)
    if problem is not None:
        raise InvalidArgumentError(field, problem)
    return value


def seconds(message: duration_pb2.Duration, field: str, *, allow_zero: bool, minimum: float = 0.0) -> float:
    """A Duration in seconds: not negative, at most a year, positive unless ``allow_zero``."""
    if message.seconds < 0 or message.nanos < 0:
        raise InvalidArgumentError(field, "must not be negative")
    if message.nanos >= 1_000_000_000:
        raise InvalidArgumentError(field, "nanos must be below 1e9")
    value = message.seconds + message.nanos / 1e9
    if value == 0 and not allow_zero:
        raise InvalidArgumentError(field, "must be positive")
    if 0 < value < minimum:
        raise InvalidArgumentError(field, f"must be at least {minimum} s")
    if value > MAX_DURATION:
        raise InvalidArgumentError(field, "must be at most 366 days")
    return value


def options(message: session_pb2.SessionOptions, has: bool, defaults: ServerConfig) -> SessionOptions:
    """Session options with the server defaults filled in for unset fields."""
    creation = defaults.creation_timeout.total_seconds()
    execution = defaults.execution_timeout.total_seconds()
    heartbeat = defaults.heartbeat_timeout.total_seconds()
    caller = defaults.caller_timeout.total_seconds()
    reattach = defaults.reattach_timeout.total_seconds()
    if has:
        if message.HasField("creation_timeout"):
            creation = seconds(message.creation_timeout, "options.creation_timeout", allow_zero=True)
        if message.HasField("execution_timeout"):
            execution = seconds(message.execution_timeout, "options.execution_timeout", allow_zero=False)
        if message.HasField("heartbeat_timeout"):
            heartbeat = seconds(message.heartbeat_timeout, "options.heartbeat_timeout", allow_zero=False,
                                minimum=MIN_HEARTBEAT_TIMEOUT)
        if message.HasField("caller_timeout"):
            caller = seconds(message.caller_timeout, "options.caller_timeout", allow_zero=True,
                             minimum=MIN_HEARTBEAT_TIMEOUT)
        if message.HasField("reattach_timeout"):
            reattach = seconds(message.reattach_timeout, "options.reattach_timeout", allow_zero=True)
    return _resolved_options(creation, execution, heartbeat, caller, reattach)


@functools.lru_cache(maxsize=1024)
def _resolved_options(creation: float, execution: float, heartbeat: float, caller: float,
                      reattach: float) -> SessionOptions:
    # Interned: most sessions share a few option sets, and each open session keeps its options
    # (SessionOptions is frozen, so sharing one instance is safe).
    return SessionOptions(creation_timeout=creation, execution_timeout=execution, heartbeat_timeout=heartbeat,
                          caller_timeout=caller, reattach_timeout=reattach)


def token(value: bytes) -> bytes:
    """A recreate token's size (its content is checked by the core)."""
    if not value:
        raise InvalidRecreateTokenError("recreate_token: is required", metadata={"field": "recreate_token"})
    if len(value) > MAX_TOKEN_BYTES:
        raise InvalidRecreateTokenError("recreate_token: is too long", metadata={"field": "recreate_token"})
    return value


def state_filter(value: int) -> SessionState | None:
    """A SessionState filter (UNSPECIFIED = any)."""
    if value == session_pb2.SESSION_STATE_UNSPECIFIED:
        return None
    try:
        return SessionState(value)
    except ValueError:
        raise InvalidArgumentError("state", f"unknown SessionState value {value}") from None


def page_size(size: int) -> int:
    """A page size: 0 = the default (100), at most 1000."""
    if size < 0:
        raise InvalidArgumentError("page_size", "must not be negative")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page(size: int, token_value: str) -> tuple[int, int]:
    """(page size, seq after which to start) for ListSessions; tokens are seqs we issued."""
    size = page_size(size)
    if not token_value:
        return size, 0
    # ASCII digits only: str.isdigit() also accepts "²" and "①", which int() does not.
    if len(token_value) > 20 or not (token_value.isascii() and token_value.isdigit()):
        raise InvalidArgumentError("page_token", "is not a token this server issued")
    return size, int(token_value)


def attempt(value: int) -> int:
    """An activity attempt number: 0 (unset) or 1 for the first, never negative."""
    if value < 0:
        raise InvalidArgumentError("attempt", "must not be negative")
    return value


def capacity(value: int, field: str = "register.max_concurrent_sessions") -> int:
    """A worker's max_concurrent_sessions (0 = the default of 1000)."""
    if value < 0:
        raise InvalidArgumentError(field, "must not be negative")
    if value > MAX_SESSIONS_PER_WORKER:
        raise InvalidArgumentError(field, f"must be at most {MAX_SESSIONS_PER_WORKER}")
    return value or 1000


def _amounts(values: Mapping[str, int], field: str) -> dict[str, int]:
    """Resource amounts by name: names by the naming rule, amounts 0..MAX_AMOUNT, at most MAX_RESOURCES."""
    if len(values) > MAX_RESOURCES:
        raise InvalidArgumentError(field, f"has more than {MAX_RESOURCES} resources")
    for name in sorted(values):
        problem = label_problem(name)
        if problem is not None:
            raise InvalidArgumentError(field, f"resource name {shown(name)} {problem}")
        amount = values[name]
        if amount < 0:
            raise InvalidArgumentError(f"{field}[{name}]", "must not be negative")
        if amount > MAX_AMOUNT:
            raise InvalidArgumentError(f"{field}[{name}]", f"must be at most {MAX_AMOUNT}")
    return dict(values)


def capacities(values: Mapping[str, int], max_sessions: int) -> ResourceVector:
    """What a worker can hold: ``register.capacities`` with ``sessions`` from either field (equal
    when both are given; 0 or missing = the other, else the default of 1000)."""
    amounts = _amounts(values, "register.capacities")
    declared = amounts.get(SESSIONS, 0)
    if declared:
        capacity(declared, f"register.capacities[{SESSIONS}]")
        if max_sessions and max_sessions != declared:
            raise InvalidArgumentError(f"register.capacities[{SESSIONS}]",
                                       f"is {declared} but max_concurrent_sessions is {max_sessions}: "
                                       "give one, or both equal")
    amounts[SESSIONS] = capacity(declared or max_sessions)
    return ResourceVector(amounts)


def demand(values: Mapping[str, int], field: str = "options.resources") -> ResourceVector:
    """What a session asks for: its resources plus ``sessions: 1`` (which may be given, as 1)."""
    amounts = _amounts(values, field)
    if amounts.get(SESSIONS, 1) != 1:
        raise InvalidArgumentError(f"{field}[{SESSIONS}]", "a session always takes exactly 1 (omit it or give 1)")
    amounts[SESSIONS] = 1
    return _interned_demand(tuple(sorted(amounts.items())))


@functools.lru_cache(maxsize=1024)
def _interned_demand(items: tuple[tuple[str, int], ...]) -> ResourceVector:
    # Most sessions ask for one of a few vectors; each open session keeps its own reference.
    return ResourceVector(dict(items))


def labels(values: Mapping[str, str]) -> dict[str, str]:
    """A worker's labels: keys and values by the naming rule, at most MAX_LABELS."""
    if len(values) > MAX_LABELS:
        raise InvalidArgumentError("register.labels", f"has more than {MAX_LABELS} labels")
    for key in sorted(values):
        problem = label_problem(key)
        if problem is not None:
            raise InvalidArgumentError("register.labels", f"label key {shown(key)} {problem}")
        problem = label_problem(values[key])
        if problem is not None:
            raise InvalidArgumentError(f"register.labels[{key}]", f"value {shown(values[key])} {problem}")
    return dict(values)


def selector(text: str, field: str = "options.selector") -> Selector:
    """A label selector (see :mod:`sessiond.core.selector` for the grammar)."""
    if not text:
        return EVERYTHING
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise InvalidArgumentError(field, str(exc)) from None


def no_selector(text: str) -> None:
    """A Recreate's selector: it goes to its token's worker, so there is nothing to select."""
    if text:
        raise InvalidArgumentError("options.selector", "a Recreate goes to its token's worker: leave it empty")


def resource_filter(value: str) -> str:
    """A ListSessions ``resource`` filter: empty (all) or a resource name."""
    if value:
        problem = label_problem(value)
        if problem is not None:
            raise InvalidArgumentError("resource", problem)
    return value


def worker_page(size: int, token_value: str) -> tuple[int, WorkerKey | None]:
    """(page size, worker key after which to start) for ListWorkers."""
    size = page_size(size)
    if not token_value:
        return size, None
    not_ours = InvalidArgumentError("page_token", "is not a token this server issued")
    # Two names as escaped JSON in base64 stay near 2 KiB: anything longer is not ours.
    if len(token_value) > MAX_TOKEN_BYTES:
        raise not_ours
    try:
        queue, worker_id = json.loads(base64.urlsafe_b64decode(token_value.encode()))
    except (ValueError, TypeError, binascii.Error, RecursionError):  # deep nesting: RecursionError
        raise not_ours from None
    if not isinstance(queue, str) or not isinstance(worker_id, str) or name_problem(queue) or name_problem(worker_id):
        raise not_ours
    return size, WorkerKey(queue, worker_id)


def worker_token(key: WorkerKey | None) -> str:
    """The ListWorkers page token that continues after ``key`` ("" = last page)."""
    if key is None:
        return ""
    return base64.urlsafe_b64encode(json.dumps([key.task_queue, key.worker_id]).encode()).decode()
