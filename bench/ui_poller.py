"""An open dashboard page, simulated: polls the dashboard's JSON API exactly as ``sessiond/ui/static/app.js`` does.

Each poll fetches, in parallel, the overview, the first page of workers and the first page of
sessions (page size 50, no filter: the page's defaults); the next poll starts ``POLL_INTERVAL_MS``
(the interval the server hands the page) after the previous one ended, as the page's timer does.

Prints ``{"event": "ready"}`` after a first successful poll. SIGUSR2 pauses polling (a closed page)
and prints ``{"event": "paused", "polls": N, ...}`` for the polls since the last resume; SIGUSR1
resumes (prints ``resumed``). ``--start-paused`` pauses right after the first poll. SIGTERM stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import aiohttp

from bench.common import emit
from bench.stats import latency_summary
from sessiond.ui import POLL_INTERVAL_MS

# What one poll of the page requests (app.js: poll()).
PAGE_SIZE = 50
POLL_PATHS = ("/api/v1/overview", f"/api/v1/workers?page_size={PAGE_SIZE}",
              f"/api/v1/sessions?page_size={PAGE_SIZE}")


class Page:
    """One simulated page: poll, then wait an interval, while active."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.active = asyncio.Event()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    async def _get(self, path: str) -> None:
        async with self.http.get(self.base + path) as response:
            await response.read()
            response.raise_for_status()

    async def poll(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.gather(*(self._get(path) for path in POLL_PATHS))
            self.latencies.append(time.perf_counter() - started)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.active.wait()
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_MS / 1000)

    def take(self) -> dict[str, object]:
        """The polls since the last call."""
        out = {"polls": len(self.latencies), "errors": sum(self.errors.values()),
               "poll": latency_summary(self.latencies)}
        self.latencies, self.errors = [], {}
        return out


async def _run(base: str, start_paused: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        page = Page(http, base)
        await page.poll()
        if page.errors:
            raise SystemExit(f"the dashboard at {base} does not answer: {page.errors}")

        def pause() -> None:
            page.active.clear()
            emit("paused", **page.take())

        def resume() -> None:
            page.take()
            page.active.set()
            emit("resumed")

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, resume)
        loop.add_signal_handler(signal.SIGUSR2, pause)
        if not start_paused:
            page.active.set()
        emit("ready", interval_ms=POLL_INTERVAL_MS, requests_per_poll=len(POLL_PATHS), paused=start_paused)
        runner = asyncio.create_task(page.run(stop))
        await stop.wait()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        emit("result", **page.take())


def main(argv: list[str] | None = None) -> int:
    """Poll until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench.ui_poller", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the dashboard's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--start-paused", action="store_true", help="pause after the first poll (SIGUSR1 resumes)")
    args = parser.parse_args(argv)
    asyncio.run(_run(args.url.rstrip("/"), args.start_paused))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
