"""The ``sessiond`` command: ``serve`` runs the server, ``health`` probes one, ``sessions`` /
``workers`` show what a running server holds (see :mod:`sessiond.ops`), and ``worker`` runs a
worker for a list of activities (see :mod:`sessiond.worker_cli`).

Every :class:`~sessiond.config.ServerConfig` field is a ``serve`` flag (``--field-name``) and a
``SESSIOND_FIELD_NAME`` environment variable; flags win. Every start-up error is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from datetime import timedelta
from typing import Any, NoReturn

from sessiond import ops, worker_cli
from sessiond.config import (
    DURATION_FORMS,
    ENV_PREFIX,
    SECRET_FIELDS,
    ServerConfig,
    config_from_env,
    format_duration,
    parse_field,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _default_text(value: Any) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    return "unset" if value is None else str(value)


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not MISSING else None
        unit = f" (a duration: {DURATION_FORMS})" if isinstance(default, timedelta) else ""
        help_text = f"{f.metadata['help']}{unit} [env {env}; default {_default_text(default)}]"

        def convert(raw: str, name: str = f.name) -> Any:
            try:
                return parse_field(name, raw)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from exc

        parser.add_argument(flag, dest=f.name, type=convert, default=None, help=help_text,
                            metavar=f.name.upper())


def version_text() -> str:
    """``sessiond X (sessiond-client Y)``: both, since they are installed as two distributions."""
    import sessiond_client

    from sessiond import __version__

    return f"sessiond {__version__} (sessiond-client {sessiond_client.__version__})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sessiond`` command."""
    parser = _Parser(
        prog="sessiond", description="sessiond: worker sessions as a gRPC service.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the versions of sessiond and sessiond-client, then exit")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default command)",
                           description="Run the sessiond gRPC server until SIGTERM/SIGINT.")
    _add_serve_flags(serve)
    health = sub.add_parser("health", help="check a server's grpc.health.v1 status (exit 0 when SERVING)",
                            description="Call grpc.health.v1.Health/Check; exit 0 when SERVING, 1 otherwise.")
    ops.add_connection_flags(health, token_env=None)
    health.add_argument("--service", default="", help="service name to check ['' = the whole server]")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait [3]")
    ops.add_commands(sub)
    worker_cli.add_command(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from sessiond import logs
    from sessiond.server import StartupError, serve

    try:
        config = ServerConfig().with_overrides(**config_from_env())
        config = config.with_overrides(**{f.name: getattr(args, f.name) for f in fields(ServerConfig)})
    except ValueError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    from sessiond import event_loop

    try:
        event_loop.loop_factory(config.loop)  # uvloop asked for and not installed: one line, exit 2
    except ValueError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    # Flags are in /proc/PID/cmdline and `ps` output: readable by every local user.
    visible = [f"--{flag} was given on the command line, where every local user can read it; use --{flag}-file or "
               f"{ENV_PREFIX}{name.upper()} instead"
               for name in sorted(SECRET_FIELDS) if getattr(args, name, None) is not None
               for flag in (name.replace("_", "-"),)]
    try:
        event_loop.run(serve(config, warnings=visible), config.loop)
    except StartupError as exc:  # an address, a file, an exporter: one line, not a traceback
        print(f"sessiond: {exc}", file=sys.stderr)
        return 2
    return 0


def _health(args: argparse.Namespace) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        opened, _, metadata = ops.connect(args)
    except ops.CommandError as exc:
        print(f"sessiond: {exc}", file=sys.stderr)
        return False
    with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout,
                               metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"unhealthy: {code}: {details}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sessiond`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return 0 if _health(args) else 1
    if args.command in ("sessions", "workers"):
        return ops.run(args)
    if args.command == "worker":
        return worker_cli.run(args)
    return _serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
