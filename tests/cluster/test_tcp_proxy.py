"""The fault-injection proxy the cluster tier (and later fault tests) rely on: it forwards, a
blackhole holds every byte back without closing anything, resume delivers them, cut closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.cluster.conftest import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[str]:
    """A TCP echo server on a free port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_forward_blackhole_resume_and_cut(echo: str) -> None:
    async with TcpProxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"one")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"

        proxy.blackhole()
        writer.write(b"two")
        await writer.drain()
        pending = asyncio.ensure_future(reader.readexactly(3))
        done, _ = await asyncio.wait({pending}, timeout=0.3)  # nothing may arrive while partitioned
        assert not done and not reader.at_eof()
        # A new connection during the partition is accepted but gets no answer either.
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        late_writer.write(b"hey")
        late = asyncio.ensure_future(late_reader.readexactly(3))

        proxy.resume()
        assert await asyncio.wait_for(pending, 5) == b"two"  # held back, then delivered
        assert await asyncio.wait_for(late, 5) == b"hey"
        assert proxy.connections == 2

        await proxy.cut()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
        await eventually(lambda: late_reader.at_eof() or late_reader.exception() is not None, timeout=5)
        for w in (writer, late_writer):
            w.close()

        # After a cut, new connections work as before.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"three")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"three"
        writer.close()
