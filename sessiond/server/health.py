"""``grpc.health.v1.Health``: Check, List and Watch over one status per service name.

Watch is an async generator (as every stream handler here) and ends once the server has said
NOT_SERVING for its shutdown: a watcher then holds neither the grace period nor a handler that
grpc would have to cancel mid-wait at its end (which it logs as an ERROR traceback).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

Context = grpc.aio.ServicerContext[Any, Any]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer:
    """Serving status per service name ("" = the whole server); see the module docstring."""

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {"": SERVING}
        self._shutting_down = False
        # Replaced on every change: a watcher waits on the one that was current when it last read.
        self._changed = asyncio.Event()

    def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Set a service's status (ignored once shutting down: NOT_SERVING is final)."""
        if not self._shutting_down:
            self._set(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; watchers are told and their streams end."""
        self._shutting_down = True
        for service in list(self._status):
            self._set(service, NOT_SERVING)

    def _set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        self._status[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: Context) -> health_pb2.HealthCheckResponse:
        """The service's status; NOT_FOUND for a service never set (the health protocol's answer)."""
        status = self._status.get(request.service)
        if status is None:
            # Not echoed in full: a status message is a header, and the name is the peer's (any size).
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest,
                   context: Context) -> health_pb2.HealthListResponse:
        """Every service's status."""
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in self._status.items()})

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: Context) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change; ends after NOT_SERVING at shutdown."""
        last = None
        while True:
            changed = self._changed  # taken before reading: a change during the yield is not missed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._shutting_down:
                return
            await changed.wait()
