"""``sessiond worker MODULE:ATTR --queue Q``: run a SessionWorker for a list of activities, no script needed.

Like ``celery -A`` or ``arq``: ``MODULE:ATTR`` names a list (or tuple) of activity functions, or a
``{name: function}`` mapping, importable from the current directory. The worker is the library's
:class:`~sessiond_client.SessionWorker`, so it heartbeats at the server's interval, reconnects with
backoff when the server goes away, and drains on SIGTERM/SIGINT (a second signal stops at once).
Exit codes: 0 after a clean shutdown, 1 when the server rejected the worker (credentials,
arguments), 2 for a usage error (an unimportable module, an attribute that is not activities).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sessiond.core.selector import name_problem
from sessiond.ops import _positive

__all__ = ["add_command", "load_activities", "run"]

ADDRESS_ENV = "SESSIOND_ADDRESS"
TOKEN_ENV = "SESSIOND_WORKER_TOKEN"
DEFAULT_ADDRESS = "127.0.0.1:50051"

Activities = Mapping[str, Callable[..., Any]] | list[Callable[..., Any]]


class UsageError(Exception):
    """A problem with what the command was told (exit 2)."""


def _pair(raw: str, what: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected {what}, got {raw!r}")
    problem = name_problem(name)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{name!r} {problem}")
    return name, value


def _capacity(raw: str) -> tuple[str, int]:
    """``NAME=N``: a resource the worker can hold N of."""
    name, value = _pair(raw, "NAME=N (for example gpu=2)")
    try:
        amount = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected a whole number, got {value!r}") from None
    if amount < 0:
        raise argparse.ArgumentTypeError(f"{name}: must not be negative, got {amount}")
    return name, amount


def _label(raw: str) -> tuple[str, str]:
    """``KEY=VALUE``: a label selectors match."""
    key, value = _pair(raw, "KEY=VALUE (for example zone=a)")
    problem = name_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{key}: value {value!r} {problem}")
    return key, value


def add_command(sub: Any) -> None:
    """Add the ``worker`` command to the ``sessiond`` subparsers ``sub``."""
    worker = sub.add_parser(
        "worker", help="run a worker for a list of activities (MODULE:ATTR)",
        description="Run a SessionWorker for the activities MODULE:ATTR names (a list of functions or a "
                    "{name: function} mapping). SIGTERM/SIGINT drains it; a second signal stops it at once.")
    worker.add_argument("spec", metavar="MODULE:ATTR", help="where the activities are, e.g. myapp.activities:ALL")
    worker.add_argument("--queue", required=True, help="the task queue to serve")
    worker.add_argument("--max-sessions", type=_positive, default=1000,
                        help="hard limit of sessions held at once [1000]")
    worker.add_argument("--capacity", type=_capacity, action="append", default=[], metavar="NAME=N",
                        help="a resource the worker can hold N of, a hard limit, e.g. gpu=2 (repeatable)")
    worker.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                        help="a label session selectors match, e.g. zone=a (repeatable)")
    worker.add_argument("--address", default=None,
                        help=f"host:port of sessiond [env {ADDRESS_ENV}; default {DEFAULT_ADDRESS}]")
    worker.add_argument("--worker-id", default=None, help="stable worker id (recreate tokens survive restarts)")
    worker.add_argument("--identity", default=None, help="free-form identity [pid@host]")
    worker.add_argument("--token", default=None,
                        help=f"worker bearer token; prefer --token-file (flags show in ps) [env {TOKEN_ENV}]")
    worker.add_argument("--token-file", type=Path, default=None,
                        help="file whose first line is the worker bearer token (re-read at every reconnect)")
    worker.add_argument("--tls-ca", type=Path, default=None, help="PEM CA bundle: connect with TLS, trusting it")
    worker.add_argument("--tls", action="store_true", help="connect with TLS (system trust store)")
    worker.add_argument("--tls-cert", type=Path, default=None, help="PEM client certificate (mTLS; with --tls-key)")
    worker.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    worker.add_argument("--shutdown-grace", type=float, default=300.0,
                        help="seconds a draining worker waits for its open sessions [300]")
    worker.add_argument("--max-activity-threads", type=_positive, default=100,
                        help="threads for plain (sync) activity functions [100]")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level [INFO]")


def load_activities(spec: str) -> Activities:
    """Import ``MODULE:ATTR`` (from the current directory too) and check it holds activities.

    Raises:
        UsageError: The spec is malformed, the module cannot be imported, or the attribute is not a
            list of callables or a mapping of names to callables.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (for example myapp.activities:ACTIVITIES), got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's package is where they stand
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise UsageError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if isinstance(value, Mapping):
        if value and all(isinstance(k, str) and callable(v) for k, v in value.items()):
            return dict(value)
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
        items = list(value)
        if items and all(callable(v) for v in items):
            return items
    elif callable(value):
        return [value]
    raise UsageError(f"{spec} must be a non-empty list of activity functions or a {{name: function}} mapping, "
                     f"got {type(value).__name__}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``worker`` command until it is shut down; returns the exit code."""
    from sessiond_client import SessiondError, SessionWorker

    from sessiond import logs

    try:
        if args.token is not None and args.token_file is not None:
            raise UsageError("give --token or --token-file, not both")
        activities = load_activities(args.spec)
        worker = SessionWorker(
            args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS, args.queue, activities,
            max_concurrent_sessions=args.max_sessions, worker_id=args.worker_id, identity=args.identity,
            auth_token=None if args.token_file else args.token or os.environ.get(TOKEN_ENV) or None,
            auth_token_file=args.token_file, tls=args.tls,
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
            shutdown_grace=args.shutdown_grace, max_activity_threads=args.max_activity_threads,
            capacities=dict(args.capacity), labels=dict(args.label))
    except (UsageError, ValueError, TypeError, OSError) as exc:
        print(f"sessiond worker: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, "text")
    logging.getLogger("sessiond_client").info(
        "serving %d activities on task queue %r", len(activities), args.queue)
    try:
        asyncio.run(worker.run(handle_signals=True))
    except SessiondError as exc:
        print(f"sessiond worker: the server rejected the worker: {exc.reason or exc.code}: {exc}", file=sys.stderr)
        return 1
    return 0
