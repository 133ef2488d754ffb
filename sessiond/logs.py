"""Logging set-up: one line per event, as text or JSON, with the record's ids as fields.

Peer-supplied values (ids, names, messages) reach log lines; the text format escapes every
character that is not printable, so no value can start a forged line or drive a terminal. JSON
escapes them by itself. A line a peer can trigger at will goes through :class:`RateLimitedWarning`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _trace_fields() -> dict[str, str]:
    """The current span's ids (``trace_id``, ``span_id``), as OTLP and every trace viewer write them."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ``extra`` fields, and the ids of
    the trace being served (``trace_id``, ``span_id``) when tracing is on, to join logs and traces."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_trace_fields(),
            **_fields(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u2028``): one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, always one line (a traceback follows on its own)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The event's line: the message and its ``extra`` fields, escaped."""
        extra = "".join(f" {k}={v}" for k, v in _fields(record).items())
        return printable(super().formatMessage(record) + extra)


class RateLimitedWarning:
    """A WARNING a peer can trigger at will, logged at most once per ``interval`` seconds.

    Events in between are counted and the count is added to the next line, so a flood of bad
    requests costs one log line per interval, not one per request.
    """

    def __init__(self, logger: logging.Logger, what: str, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._next = -float("inf")
        self._dropped = 0

    def warn(self, detail: str) -> None:
        """Record one event: log it now, or count it for the next line."""
        now = self._clock()
        if now < self._next:
            self._dropped += 1
            return
        more = f" (and {self._dropped} more since the previous warning)" if self._dropped else ""
        self._logger.warning("%s %s%s", self._what, detail, more)
        self._next = now + self._interval
        self._dropped = 0


def configure(level: str, fmt: str) -> None:
    """Send sessiond's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
