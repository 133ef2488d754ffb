"""A loopback TCP proxy for fault tests: forward, stop forwarding (a partition), resume, cut.

Put it between a client and a server (``proxy.address`` instead of the server's) and then:

* :meth:`TcpProxy.blackhole` — a partition: connections stay open but no byte moves either way,
  and new connections are accepted but get no answer, like a peer whose packets are dropped. The
  peers see nothing until their own timeouts (gRPC keepalive, deadlines, heartbeats) fire.
* :meth:`TcpProxy.hold_replies` — a one-way loss: requests still reach the server, its answers are
  held back (a write is applied but its caller never hears so, until its own deadline passes).
* :meth:`TcpProxy.resume` — heal it: bytes held back are delivered, like TCP retransmission.
* :meth:`TcpProxy.cut` — close every connection now (a reset); new ones are accepted as usual.

It runs on the test's event loop; everything is on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]

CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (``host:port``). Use :meth:`start` / :meth:`close`,
    or ``async with``."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host.strip("[]"), int(port)
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._replying = asyncio.Event()  # the target -> client direction (see hold_replies)
        self._replying.set()
        self._handlers: set[asyncio.Task[object]] = set()  # one per accepted connection

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` to give the client instead of the target."""
        return f"127.0.0.1:{self.port}"

    @property
    def forwarding(self) -> bool:
        """False between :meth:`blackhole` and :meth:`resume`."""
        return self._forwarding.is_set()

    async def start(self) -> TcpProxy:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        """Stop moving bytes (both directions, all connections, new ones too)."""
        self._forwarding.clear()

    def hold_replies(self) -> None:
        """Keep forwarding to the target, but hold back every byte it sends (until :meth:`resume`)."""
        self._replying.clear()

    def resume(self) -> None:
        """Move bytes again, held-back ones first."""
        self._forwarding.set()
        self._replying.set()

    async def cut(self) -> None:
        """Close every open connection (both sides) at once."""
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        writers = [client_writer]
        pumps: list[asyncio.Task[None]] = []
        try:
            await self._forwarding.wait()  # a partitioned peer does not answer a new connection either
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
            writers.append(server_writer)
            pumps = [asyncio.create_task(self._pump(client_reader, server_writer, self._forwarding)),
                     asyncio.create_task(self._pump(server_reader, client_writer, self._replying))]
            # When one direction ends, end the other: a half-dead connection helps no test.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass  # refused by the target, or cut: the connection just closes
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in writers:
                writer.transport.abort()
            self._handlers.discard(handler)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: asyncio.Event
                    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._forwarding.wait()
                await direction.wait()
                data = await reader.read(CHUNK)
                if not data:
                    return
                await self._forwarding.wait()  # read just before a blackhole: hold it back until resume
                await direction.wait()
                writer.write(data)
                await writer.drain()
