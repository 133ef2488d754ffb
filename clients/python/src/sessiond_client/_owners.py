"""Following a replicated sessiond's owner hint (SPEC §6.5): a replica answering for a session it does
not hold (it forwarded the call to the replica owning the session's worker) names that replica in
the trailing metadata ``sessiond-owner``. A client given several addresses sends the session's later
calls straight there (sticky per session), and falls back to its own channel when that replica
does not answer. Hints naming an address outside the client's list are ignored: the client's
credentials go only where its user sent them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import grpc.aio

from sessiond_client._connection import ConnectionConfig
from sessiond_client.api.v1 import session_service_pb2_grpc

OWNER_HINT = "sessiond-owner"
MAX_HINTS = 10_000
"""Sessions whose owner a client remembers (least recently used out first)."""
MAX_STALE = 8
"""Failed hint channels kept open for the calls still running on them; older ones are closed."""


def replica_addresses(target: str) -> frozenset[str]:
    """The addresses of a comma-separated target (empty for one address: nothing to choose from)."""
    if "," not in target:
        return frozenset()
    return frozenset(item.strip() for item in target.removeprefix("ipv4:").removeprefix("ipv6:").split(","))


def hint_in(metadata: Iterable[Any] | None) -> str | None:
    """The owner hint in a call's trailing metadata, if any."""
    for pair in metadata or ():
        key, value = pair[0], pair[1]
        if key == OWNER_HINT and isinstance(value, str):
            return value
    return None


class OwnerHints:
    """Which replica owns which session, and a channel to each replica named by a hint."""

    def __init__(self, config: ConnectionConfig) -> None:
        self._config = config
        self.replicas = replica_addresses(config.target)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, session_service_pb2_grpc.SessionServiceAsyncStub] = {}
        self._stale: list[grpc.aio.Channel] = []  # closed with the client (calls may still run on them)
        self._closing: set[asyncio.Future[None]] = set()

    @property
    def enabled(self) -> bool:
        """Whether the client knows several replicas (hints are followed only then)."""
        return bool(self.replicas)

    def stub_for(self, session_id: str) -> session_service_pb2_grpc.SessionServiceAsyncStub | None:
        """A stub on the channel to the session's owner, or None (no hint: use the client's channel)."""
        address = self._owners.get(session_id)
        if address is None:
            return None
        stub = self._stubs.get(address)
        if stub is None:
            channel = dataclasses.replace(self._config, target=address).open_channel()
            self._channels[address] = channel
            stub = self._stubs[address] = session_service_pb2_grpc.SessionServiceStub(channel)
        return stub

    def note(self, session_id: str, metadata: Iterable[Any] | None) -> None:
        """Remember the owner a call's trailing metadata names (if one of the client's addresses)."""
        address = hint_in(metadata)
        if address is None or address not in self.replicas or not session_id:
            return
        self._owners[session_id] = address
        self._owners.move_to_end(session_id)
        if len(self._owners) > MAX_HINTS:
            self._owners.popitem(last=False)

    def failed(self, session_id: str) -> None:
        """The hinted replica did not answer: the session's calls go through the client's channel
        again, and the next hint to that replica opens a fresh channel (a channel that failed to
        connect backs off its reconnects, up to minutes)."""
        address = self._owners.pop(session_id, None)
        if address is not None and address in self._channels:
            self._stale.append(self._channels.pop(address))
            self._stubs.pop(address, None)
            if len(self._stale) > MAX_STALE:  # bounded: a replica that keeps failing does not pile them up
                self._closing.add(asyncio.ensure_future(self._stale.pop(0).close(grace=None)))
                for task in [t for t in self._closing if t.done()]:
                    self._closing.discard(task)

    def hinted(self, session_id: str) -> str | None:
        """The replica a session's calls go to directly (None: the client's channel)."""
        return self._owners.get(session_id)

    async def close(self, grace: float | None = None) -> None:
        """Close the channels to hinted replicas."""
        for channel in [*self._channels.values(), *self._stale]:
            await channel.close(grace)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
            self._closing.clear()
        self._channels.clear()
        self._stale.clear()
        self._stubs.clear()
