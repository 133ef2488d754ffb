"""Operator commands: ``sessiond sessions list|get|complete`` and ``sessiond workers list|waiting``.

They talk to a running server over the public ``sessiond.v1`` API (``ListSessions``,
``GetSessionInfo``, ``CompleteSession``, ``ListWorkers``), follow ``next_page_token`` until the last page (or
``--limit``), and print an aligned table, or JSON with ``--json``. Any RPC error prints its status
code, ``ErrorInfo`` reason and message on stderr and exits 1.

The address comes from ``--address``, else ``SESSIOND_ADDRESS``, else ``127.0.0.1:50051``; a bearer
token from ``--token-file`` or ``--token``, else ``SESSIOND_CALLER_TOKEN`` (the same variable
``serve`` reads). ``--tls-ca`` (or ``--tls``) connects with TLS, ``--tls-cert``/``--tls-key`` add a
client certificate (mTLS). ``sessiond health`` takes the same connection flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.core.selector import Selector, SelectorError, parse_selector

__all__ = ["DEFAULT_ADDRESS", "add_commands", "add_connection_flags", "connect", "run"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "SESSIOND_ADDRESS"
TOKEN_ENV = "SESSIOND_CALLER_TOKEN"
# The server caps a page at 1000; a full page per round trip keeps big listings cheap.
DEFAULT_PAGE_SIZE = 1000

_STATES = {
    "open": session_pb2.SESSION_STATE_OPEN,
    "failed": session_pb2.SESSION_STATE_FAILED,
    "closed": session_pb2.SESSION_STATE_CLOSED,
}

T = TypeVar("T")


class CommandError(Exception):
    """A failure to report on stderr (exit 1)."""


# ---- argument parsing --------------------------------------------------------------------------


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_connection_flags(parser: argparse.ArgumentParser, *, token_env: str | None = TOKEN_ENV) -> None:
    """``--address``, ``--token``/``--token-file`` and the TLS flags: how to reach a server."""
    parser.add_argument("--address", default=None,
                        help=f"host:port of the server [env {ADDRESS_ENV}; default {DEFAULT_ADDRESS}]")
    env = f" [env {token_env}]" if token_env else ""
    parser.add_argument("--token", default=None,
                        help=f"bearer token, sent as 'authorization: Bearer'; prefer --token-file (flags show in "
                             f"ps){env}")
    parser.add_argument("--token-file", type=Path, default=None, help="file whose first line is the bearer token")
    parser.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    parser.add_argument("--tls-ca", type=Path, default=None, help="PEM CA bundle: connect with TLS, trusting it")
    parser.add_argument("--tls-cert", type=Path, default=None,
                        help="PEM client certificate (mTLS; with --tls-key)")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.set_defaults(token_env=token_env)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{what} {path}: {exc.strerror or exc}") from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token is not None and args.token_file is not None:
        raise CommandError("give --token or --token-file, not both")
    if args.token_file is not None:
        lines = _read(args.token_file, "--token-file").decode("utf-8", "replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise CommandError(f"--token-file {args.token_file}: the first line is empty")
        return token
    env = getattr(args, "token_env", None)
    return args.token or (os.environ.get(env) if env else None) or None


def connect(args: argparse.Namespace) -> tuple[grpc.Channel, str, tuple[tuple[str, str], ...] | None]:
    """A channel to the server the connection flags name, its address, and the call metadata.

    Raises:
        CommandError: a flag that cannot be used (a missing file, a certificate without its key).
    """
    address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    token = _token(args)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("--tls-cert and --tls-key go together")
    if not (args.tls or args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(address), address, metadata
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "--tls-ca") if args.tls_ca else None,
        private_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
        certificate_chain=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
    )
    return grpc.secure_channel(address, credentials), address, metadata
def _selector(raw: str) -> Selector:
    try:
        return parse_selector(raw)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(f"selector {exc}") from None


def _connection_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_connection_flags(common)
    common.add_argument("--timeout", type=float, default=10.0, help="seconds each RPC may take [10]")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def _paging_flags() -> argparse.ArgumentParser:
    paging = argparse.ArgumentParser(add_help=False)
    paging.add_argument("--limit", type=_positive, default=None, help="print at most this many [all]")
    paging.add_argument("--page-size", type=_positive, default=DEFAULT_PAGE_SIZE,
                        help=f"results per ListSessions/ListWorkers call [{DEFAULT_PAGE_SIZE}]")
    return paging


def add_commands(sub: Any) -> None:
    """Add the ``sessions`` and ``workers`` commands to the ``sessiond`` subparsers ``sub``."""
    common, paging = _connection_flags(), _paging_flags()

    sessions = sub.add_parser("sessions", help="list or show sessions of a running server",
                              description="Read sessions of a running sessiond server.")
    sessions_sub = sessions.add_subparsers(dest="action", required=True, metavar="{list,get,complete}")
    listing = sessions_sub.add_parser(
        "list", parents=[common, paging], help="list sessions, oldest first",
        description="List sessions (oldest first), following every page.")
    listing.add_argument("--task-queue", default="", help="only sessions of this task queue")
    listing.add_argument("--owner", default="", help="only sessions of this owner")
    listing.add_argument("--principal", default="",
                         help="only sessions of this principal (an operator sees every principal's)")
    listing.add_argument("--state", choices=sorted(_STATES), default=None, help="only sessions in this state")
    listing.add_argument("--resource", default="", metavar="NAME", help="only sessions holding this resource (gpu)")
    get = sessions_sub.add_parser("get", parents=[common], help="show one session",
                                  description="Show one session (GetSessionInfo).")
    get.add_argument("session_id", metavar="ID", help="the session id")
    complete = sessions_sub.add_parser(
        "complete", parents=[common], help="complete (close) a session: frees its worker slot",
        description="Complete a session (CompleteSession): its worker slot is freed at once and its running "
                    "activities are cancelled. Idempotent; a no-op on a FAILED or CLOSED session.")
    complete.add_argument("session_id", metavar="ID", help="the session id")

    workers = sub.add_parser("workers", help="list connected workers of a running server",
                             description="Read the workers connected to a running sessiond server.")
    workers_sub = workers.add_subparsers(dest="action", required=True, metavar="{list,waiting}")
    wlist = workers_sub.add_parser("list", parents=[common, paging], help="list connected workers",
                                   description="List connected workers with their capacities, what they hold and "
                                               "their labels, following every page.")
    wlist.add_argument("--task-queue", default="", help="only workers of this task queue")
    wlist.add_argument("--selector", type=_selector, default=None, metavar="SELECTOR",
                       help="only workers whose labels match, e.g. 'zone=a, gpu_model in (h100,a100), ssd'")
    waiting = workers_sub.add_parser(
        "waiting", parents=[common], help="list waiting creates and why they cannot be placed",
        description="List the creates waiting for a worker, grouped by what they ask for, with why no "
                    "connected worker could ever hold them (when none could).")
    waiting.add_argument("--task-queue", default="", help="only creates waiting on this task queue")


# ---- running -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``sessions`` or ``workers`` command; returns the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    try:
        opened, address, metadata = connect(args)
        with opened as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)

            def call(method: Callable[..., T], request: Message) -> T:
                return method(request, timeout=args.timeout, metadata=metadata)

            _dispatch(args, stub, call, out, err)
    except grpc.RpcError as exc:
        print(_describe_error(exc, address), file=err)
        return 1
    except CommandError as exc:
        print(f"sessiond: {exc}", file=err)
        return 1
    return 0


def _dispatch(args: argparse.Namespace, stub: session_service_pb2_grpc.SessionServiceStub,
              call: Callable[[Callable[..., Any], Message], Any], out: TextIO, err: TextIO) -> None:
    now = time.time()
    if args.command == "sessions" and args.action in ("get", "complete"):
        if args.action == "get":
            reply: session_service_pb2.GetSessionInfoResponse = call(
                stub.GetSessionInfo, session_service_pb2.GetSessionInfoRequest(session_id=args.session_id))
            session, incarnation = reply.session, reply.server_incarnation
        else:
            done: session_service_pb2.CompleteSessionResponse = call(
                stub.CompleteSession, session_service_pb2.CompleteSessionRequest(session_id=args.session_id))
            session, incarnation = done.session, ""
        if args.json:
            _print_json(_to_dict(session), out)
        else:
            _print_session(session, incarnation, now, out)
    elif args.command == "sessions":
        request = session_service_pb2.ListSessionsRequest(
            task_queue=args.task_queue, owner=args.owner, principal=args.principal, resource=args.resource,
            state=_STATES[args.state] if args.state else session_pb2.SESSION_STATE_UNSPECIFIED)

        def session_page(request: session_service_pb2.ListSessionsRequest,
                         ) -> tuple[Sequence[session_pb2.Session], str]:
            page: session_service_pb2.ListSessionsResponse = call(stub.ListSessions, request)
            return page.sessions, page.next_page_token

        sessions = list(_pages(request, session_page, args.page_size, args.limit))
        if args.json:
            _print_json([_to_dict(s) for s in sessions], out)
        else:
            _print_table(_SESSION_COLUMNS, [_session_row(s, now) for s in sessions], "sessions", out, err)
    elif args.action == "waiting":
        first: session_service_pb2.ListWorkersResponse = call(
            stub.ListWorkers, session_service_pb2.ListWorkersRequest(task_queue=args.task_queue, page_size=1))
        if args.json:
            _print_json([_to_dict(w) for w in first.waiting], out)
        else:
            _print_table(_WAITING_COLUMNS, [_waiting_row(w, now) for w in first.waiting], "waiting creates", out,
                         err)
    else:
        wrequest = session_service_pb2.ListWorkersRequest(task_queue=args.task_queue)
        waiting: list[session_pb2.WaitingRequests] = []

        def worker_page(request: session_service_pb2.ListWorkersRequest,
                        ) -> tuple[Sequence[session_pb2.WorkerInfo], str]:
            page: session_service_pb2.ListWorkersResponse = call(stub.ListWorkers, request)
            waiting.extend(page.waiting)
            return page.workers, page.next_page_token

        # A selector filters here, on every page; without one --limit stops the paging early.
        workers = list(_pages(wrequest, worker_page, args.page_size, args.limit if args.selector is None else None))
        if args.selector is not None:
            workers = [w for w in workers if args.selector.matches(w.labels)][:args.limit]
        if args.json:
            _print_json([_to_dict(w) for w in workers], out)
        else:
            _print_table(_WORKER_COLUMNS, [_worker_row(w, now) for w in workers], "workers", out, err)
        stuck = sum(w.count for w in waiting if w.unplaceable_reason)
        if stuck:
            # On stderr, like "No workers found.": the table stays rows only.
            err.write(f"{stuck} waiting create{'s' if stuck != 1 else ''} cannot be placed on any connected "
                      "worker: see 'sessiond workers waiting'.\n")


R = TypeVar("R", session_service_pb2.ListSessionsRequest, session_service_pb2.ListWorkersRequest)


def _pages(request: R, fetch: Callable[[R], tuple[Sequence[T], str]], page_size: int,
           limit: int | None) -> Iterator[T]:
    """Every item of every page, stopping after ``limit`` items."""
    count = 0
    while True:
        if limit is not None:
            request.page_size = min(page_size, limit - count)
        else:
            request.page_size = page_size
        items, token = fetch(request)
        for item in items:
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
        if not token:
            return
        if token == request.page_token:
            # A server that hands back the token it was given would loop forever.
            raise CommandError(f"the server returned the same page token twice ({token!r})")
        request.page_token = token


def _describe_error(exc: grpc.RpcError, address: str) -> str:
    code: grpc.StatusCode | None = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"sessiond: cannot reach the server at {address}: UNAVAILABLE: {details}"
    name = code.name if code is not None else "UNKNOWN"
    reason = _error_reason(exc)
    return f"sessiond: {name}{f' ({reason})' if reason else ''}: {details}"


def _error_reason(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason of a rich status, or ''."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


# ---- output ------------------------------------------------------------------------------------


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """The short name of an enum value (OPEN, WORKER_LOST); the number if this build does not know it."""
    known = enum.DESCRIPTOR.values_by_number.get(value)
    return str(value) if known is None else str(known.name).removeprefix(prefix)


def _state(value: int) -> str:
    return _enum_name(session_pb2.SessionState, value, "SESSION_STATE_")


def _cause(value: int) -> str:
    return _enum_name(session_pb2.FailureCause, value, "FAILURE_CAUSE_")


def _age(ts: timestamp_pb2.Timestamp, now: float) -> str:
    """How long ago ``ts`` was, compactly: 42s, 3m07s, 2h05m, 3d04h."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    seconds = max(0, int(now - (ts.seconds + ts.nanos / 1e9)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _iso(ts: timestamp_pb2.Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _seconds(duration: Any) -> str:
    return f"{duration.seconds + duration.nanos / 1e9:g}s"


_SESSION_COLUMNS = ("SESSION ID", "TASK QUEUE", "STATE", "WORKER", "HOST", "OWNER", "AGE", "FAILURE",
                    "RESOURCES")
_WORKER_COLUMNS = ("WORKER ID", "TASK QUEUE", "IDENTITY", "HOST", "SESSIONS", "DRAINING", "CONNECTED",
                   "LAST HEARTBEAT", "RESOURCES", "LABELS")
_WAITING_COLUMNS = ("TASK QUEUE", "WAITING", "OLDEST", "ASKS FOR", "SELECTOR", "WHY IT CANNOT BE PLACED")


def _amounts(amounts: Any, *, skip_sessions: bool = True) -> str:
    """``gpu=1,scratch_gb=200`` (``sessions`` left out unless asked for), or ``-``."""
    items = sorted((k, v) for k, v in amounts.items() if not (skip_sessions and k == "sessions"))
    return ",".join(f"{k}={v}" for k, v in items) or "-"


def _usage(worker: session_pb2.WorkerInfo) -> str:
    """``gpu 1/2, scratch_gb 0/500``: used/capacity of each resource besides sessions, or ``-``."""
    names = sorted(n for n in worker.capacities if n != "sessions")
    return ", ".join(f"{n} {worker.used.get(n, 0)}/{worker.capacities[n]}" for n in names) or "-"


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _session_row(session: session_pb2.Session, now: float) -> tuple[str, ...]:
    return (
        session.session_id, session.task_queue, _state(session.state), session.worker.worker_id or "-",
        session.worker.host_name or "-", session.owner or "-", _age(session.create_time, now),
        _cause(session.failure.cause) if session.HasField("failure") else "-",
        _amounts(session.resources),
    )


def _worker_row(worker: session_pb2.WorkerInfo, now: float) -> tuple[str, ...]:
    return (
        worker.worker_id, worker.task_queue, worker.identity or "-", worker.host_name or "-",
        f"{worker.open_sessions}/{worker.max_concurrent_sessions}", "yes" if worker.draining else "no",
        _age(worker.connect_time, now) + " ago", _age(worker.last_heartbeat_time, now) + " ago",
        _usage(worker), _labels(worker.labels),
    )


def _waiting_row(waiting: session_pb2.WaitingRequests, now: float) -> tuple[str, ...]:
    return (
        waiting.task_queue, str(waiting.count), _age(waiting.oldest_since, now), _amounts(waiting.resources),
        waiting.selector or "-", waiting.unplaceable_reason or "- (waits for room)",
    )


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], noun: str, out: TextIO,
                 err: TextIO) -> None:
    if not rows:
        # On stderr, so that piping the table never yields a line that is not a row.
        err.write(f"No {noun} found.\n")
        return
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    for line in (columns, *rows):
        out.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")


def _print_session(session: session_pb2.Session, incarnation: str, now: float, out: TextIO) -> None:
    failure = "-"
    if session.HasField("failure"):
        failure = _cause(session.failure.cause) + (f": {session.failure.message}" if session.failure.message else "")
    fields = [
        ("Session ID", session.session_id),
        ("Task queue", session.task_queue),
        ("State", _state(session.state)),
        ("Worker", session.worker.worker_id or "-"),
        ("Identity", session.worker.identity or "-"),
        ("Host", session.worker.host_name or "-"),
        ("Owner", session.owner or "-"),
        ("Principal", session.principal or "-"),
        ("Created", f"{_iso(session.create_time)} ({_age(session.create_time, now)} ago)"),
        ("Expires", _iso(session.expire_time)),
        ("Closed", _iso(session.close_time)),
        ("Failure", failure),
        ("Resources", _amounts(session.resources, skip_sessions=False)),
        ("Selector", session.options.selector or "-"),
        ("Creation timeout", _seconds(session.options.creation_timeout)),
        ("Execution timeout", _seconds(session.options.execution_timeout)),
        ("Heartbeat timeout", _seconds(session.options.heartbeat_timeout)),
        ("Server incarnation", incarnation or "-"),
    ]
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        out.write(f"{(label + ':').ljust(width)} {value}\n")
