"""Helpers for the benchmark's child processes (servers, workers, load generators).

Children print one JSON object per line on stdout: ``{"event": "ready", ...}`` when they are up,
``{"event": "result", ...}`` when they have measured something. Nothing here imports grpc, so the
orchestrator can use it too.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# The echo baseline's methods (bytes in, bytes out: no codegen, no serializers).
ECHO_SERVICE = "echo.v1.Echo"
ECHO_UNARY = f"/{ECHO_SERVICE}/Echo"
ECHO_STREAM = f"/{ECHO_SERVICE}/EchoStream"
ECHO_NOTIFY = f"/{ECHO_SERVICE}/Notify"
ECHO_WORK = f"/{ECHO_SERVICE}/Work"
ECHO_PUSH = f"/{ECHO_SERVICE}/Push"
ECHO_RELAY = f"/{ECHO_SERVICE}/Relay"

# Both servers get the same grpc core options, so the baseline differs from sessiond by the service only.
# (Mirrors sessiond.server.app._grpc_options with the default max_pending_requests.)
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

PAYLOAD_BYTES = 100


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line on stdout (flushed: the orchestrator is waiting for it)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it start at index 2.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS from /proc/<pid>/status); None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
