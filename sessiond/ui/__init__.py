"""The operator dashboard: one page and a small JSON API, served from the sessiond process.

``sessiond serve --ui-listen 127.0.0.1:8080`` (or ``SESSIOND_UI_LISTEN``) turns it on. The page is
static HTML, CSS and plain JavaScript shipped in ``static/`` (no build step, nothing fetched from
elsewhere); it polls the JSON endpoints of :mod:`sessiond.ui.http`, whose shapes live in
:mod:`sessiond.ui.views` and whose access rule lives in :mod:`sessiond.ui.access`.
"""

from sessiond.ui.http import POLL_INTERVAL_MS, Dashboard

__all__ = ["POLL_INTERVAL_MS", "Dashboard"]
