"""The Python client's owner hints (a replicated sessiond names the replica owning a session):
followed only to the client's own addresses, and failed hint channels do not pile up."""

from __future__ import annotations

import pytest
from sessiond_client._connection import ConnectionConfig
from sessiond_client._owners import MAX_STALE, OWNER_HINT, OwnerHints

pytestmark = pytest.mark.asyncio


async def test_a_hint_is_followed_only_to_one_of_the_clients_own_addresses() -> None:
    hints = OwnerHints(ConnectionConfig(target="127.0.0.1:1,127.0.0.1:2"))
    hints.note("s1", [(OWNER_HINT, "attacker.example:443")])
    assert hints.hinted("s1") is None and hints.stub_for("s1") is None
    hints.note("s1", [(OWNER_HINT, "127.0.0.1:2")])
    assert hints.hinted("s1") == "127.0.0.1:2" and hints.stub_for("s1") is not None
    await hints.close()


async def test_one_address_follows_no_hint() -> None:
    hints = OwnerHints(ConnectionConfig(target="127.0.0.1:1"))
    hints.note("s1", [(OWNER_HINT, "127.0.0.1:1")])
    assert not hints.enabled and hints.hinted("s1") is None
    await hints.close()


async def test_a_replica_that_keeps_failing_leaves_a_bounded_number_of_channels_open() -> None:
    hints = OwnerHints(ConnectionConfig(target="127.0.0.1:1,127.0.0.1:2"))
    for n in range(50):
        hints.note(f"s{n}", [(OWNER_HINT, "127.0.0.1:2")])
        assert hints.stub_for(f"s{n}") is not None  # opens a channel to the hinted replica
        hints.failed(f"s{n}")
        assert hints.hinted(f"s{n}") is None  # back to the client's own channel
    assert len(hints._stale) <= MAX_STALE
    await hints.close()
    assert not hints._stale and not hints._closing
