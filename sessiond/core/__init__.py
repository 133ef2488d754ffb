"""The pure session core: no grpc, no asyncio, no OpenTelemetry, no generated code, no clock."""

from sessiond.core.errors import SessionError
from sessiond.core.model import FailureCause, SessionOptions, SessionState, WorkerKey, WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.core.table import SessionTable

__all__ = [
    "FailureCause",
    "ResourceVector",
    "SessionError",
    "SessionOptions",
    "SessionState",
    "SessionTable",
    "WorkerKey",
    "WorkerRegistration",
]
