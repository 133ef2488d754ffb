"""Fixtures of the dashboard tier: a real sessiond with its dashboard on, and an HTTP client for it.

The integration tier's fixtures are reused (a real grpc.aio server on port 0, in-process raw
workers, worker processes); ``sessiond`` is overridden here so every server has ``--ui-listen``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

from tests.integration.conftest import (  # noqa: F401  (fixtures used by name)
    ServerFactory,
    Sessiond,
    make_server,
    make_worker,
    spawn_worker,
)


@dataclass
class Reply:
    """One HTTP answer: status, headers and the JSON body (None when the body is not JSON)."""

    status: int
    headers: Any
    body: Any


class Dash:
    """An HTTP client for one server's dashboard."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str | None = None) -> None:
        self.http = http
        self.base = base
        self.token = token

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      **params: Any) -> Reply:
        """Send a request; ``params`` become the query string."""
        sent = dict(headers or {})
        if self.token is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {self.token}"
        query = {k: str(v) for k, v in params.items()}
        async with self.http.request(method, self.base + path, params=query, headers=sent) as response:
            text = await response.text()
            try:
                body = await response.json(content_type=None) if text else None
            except ValueError:
                body = None
            return Reply(response.status, response.headers, body)

    async def get(self, path: str, **params: Any) -> Any:
        """GET a JSON endpoint that must answer 200; returns the body."""
        reply = await self.request("GET", path, **params)
        assert reply.status == 200, f"GET {path} {params}: {reply.status} {reply.body}"
        return reply.body


def dashboard_url(server: Sessiond) -> str:
    """The base URL (no trailing slash) of a server's dashboard."""
    dashboard = server.server.dashboard
    assert dashboard is not None and dashboard.port is not None, "the dashboard is not running"
    return f"http://127.0.0.1:{dashboard.port}"


@pytest_asyncio.fixture
async def sessiond(make_server: ServerFactory) -> Sessiond:  # noqa: F811  (the fixture, by name)
    """A server with the default configuration and the dashboard on a free loopback port."""
    return await make_server(ui_listen="127.0.0.1:0")


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session (no cookies kept: the dashboard uses none)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest_asyncio.fixture
async def dash(sessiond: Sessiond, http: aiohttp.ClientSession) -> Dash:
    """A client for ``sessiond``'s dashboard."""
    return Dash(http, dashboard_url(sessiond))
