"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium, for tests
that run on an asyncio loop.

Selenium is synchronous: each call blocks until chromedriver answers. The server under test runs
on the test's event loop, so every browser call goes to one dedicated thread (the driver is not
thread-safe; one thread also keeps calls in order) while the loop keeps serving the page.

No network: Selenium is given the driver and browser paths, so its manager never downloads one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# The flags that work in this environment (containers without a display, sandbox or network).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
INSTALL_HINT = ("the browser test needs Debian's chromium and chromium-driver: "
                "apt-get install -y chromium chromium-driver")

# Every table on the page as a list of rows: {"key": data-key, cell data-label: cell text}.
_ROWS_JS = """
const table = document.getElementById(arguments[0]);
if (table === null || table.tBodies.length === 0) return [];  // not drawn yet: no rows shown
return [...table.tBodies[0].rows].map((tr) => {
  const row = {key: tr.dataset.key};
  for (const td of tr.cells) row[td.dataset.label] = td.innerText.replace(/\\s+/g, " ").trim();
  return row;
});
"""


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if driver is None and os.path.exists("/usr/lib/chromium/chromedriver"):
        driver = "/usr/lib/chromium/chromedriver"
    return (chromium, driver) if chromium and driver else None


def require_browser() -> tuple[str, str]:
    """The browser's paths; without them a skip with what to install, or a failure under ``CI=true``."""
    found = find_browser()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{INSTALL_HINT} (CI=true: a missing browser is a failure, not a skip)")
        pytest.skip(INSTALL_HINT)
    return found


class Browser:
    """One headless Chromium window; every method is a coroutine that runs the call on the driver's thread."""

    def __init__(self, chromium: str, driver: str, *, width: int = 1280, height: int = 1500) -> None:
        self._paths = (chromium, driver)
        self._size = (width, height)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selenium")
        self._profile = tempfile.mkdtemp(prefix="sessiond-chromium-")
        self.driver: Any = None

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _start(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        chromium, driver = self._paths
        options = Options()
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={self._size[0]},{self._size[1]}")
        options.binary_location = chromium
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        self.driver.set_page_load_timeout(30)

    async def start(self) -> Browser:
        """Launch Chromium."""
        await self._call(self._start)
        return self

    async def close(self) -> None:
        """Quit Chromium and remove its profile."""
        if self.driver is not None:
            await self._call(self.driver.quit)
        self._thread.shutdown(wait=True)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page to load."""
        await self._call(lambda: self.driver.get(url))

    async def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` in the page; returns what it returns."""
        return await self._call(lambda: self.driver.execute_script(script, *args))

    async def rows(self, table_id: str) -> list[dict[str, str]]:
        """The rows of a table of the page, each as {"key": ..., column label: visible text}."""
        return list(await self.js(_ROWS_JS, table_id))

    async def text(self, element_id: str) -> str:
        """The visible text of an element."""
        return str(await self.js("return document.getElementById(arguments[0]).innerText", element_id))

    async def click(self, css: str) -> None:
        """Click the element matching a CSS selector."""
        from selenium.webdriver.common.by import By

        await self._call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type_into(self, element_id: str, text: str) -> None:
        """Type ``text`` into an input."""
        from selenium.webdriver.common.by import By

        await self._call(lambda: self.driver.find_element(By.ID, element_id).send_keys(text))

    async def accept_alert(self) -> str:
        """Accept the open confirm()/alert() dialog; returns its text."""
        def accept() -> str:
            alert = self.driver.switch_to.alert
            text = str(alert.text)
            alert.accept()
            return text

        return await self._call(accept)

    async def resize(self, width: int, height: int) -> None:
        """Resize the window."""
        await self._call(lambda: self.driver.set_window_size(width, height))

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = await self._call(lambda: self.driver.save_screenshot(str(path)))
        assert saved, f"no screenshot written to {path}"
        return path

    async def console_errors(self) -> list[str]:
        """Severe browser-console entries since the last call (script errors, CSP violations, failed loads)."""
        entries = await self._call(lambda: self.driver.get_log("browser"))
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]
