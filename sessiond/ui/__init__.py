"""The operator dashboard: one page and a small JSON API, served from the sessiond process.

``sessiond serve --ui-listen 127.0.0.1:8080`` (or ``SESSIOND_UI_LISTEN``) turns it on. The page is
static HTML, CSS and plain JavaScript shipped in ``static/`` (no build step, nothing fetched from
elsewhere); it polls the JSON endpoints of :mod:`sessiond.ui.http` (the server: ``Dashboard``),
whose shapes live in :mod:`sessiond.ui.views` and whose access rule lives in
:mod:`sessiond.ui.access`. This package module imports nothing, so the page's timing can be read
without loading aiohttp or grpc (the benchmark's page simulation does).
"""

# How often the page polls; the server hands it to the page in the overview (server.poll_interval_ms).
POLL_INTERVAL_MS = 1000

__all__ = ["POLL_INTERVAL_MS"]
