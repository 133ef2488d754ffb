"""The README documents every JSON endpoint the dashboard serves (users script them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sessiond.config import ServerConfig
from sessiond.server.engine import Engine
from sessiond.ui.http import Dashboard

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.asyncio
async def test_every_api_route_is_in_the_readme_endpoint_table() -> None:
    engine = Engine(ServerConfig())
    dashboard = Dashboard(engine, ServerConfig(ui_listen="127.0.0.1:0"))
    served = {(route.method, route.resource.canonical) for route in dashboard.app.router.routes()
              if route.resource is not None and route.resource.canonical.startswith("/api/")
              and route.method != "HEAD"}
    section = README.read_text().split("### The operator dashboard", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z]+) (/api/[^?` ]+)", section, flags=re.M))

    assert served == documented
    engine.stop()
