"""What the etcd client repeats and what it never repeats, against a fake etcd (a grpc.aio server
with the same method paths) that counts every call it receives and fails the way a real member can.

A write whose answer is lost may have been applied (raft committed it, then the member died or the
deadline passed): the client must report that and leave the decision to its caller. A read, or a
call refused before etcd looked at it (a rejected auth token), is safe to repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from sessiond.store.etcd import EtcdAuth, EtcdClient, EtcdOutcomeUnknownError, EtcdUnavailableError
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.api import v3_subset_pb2_grpc as rpc
from sessiond.store.etcd.ops import created_at, put_op
from tests.cluster.conftest import eventually

pytestmark = pytest.mark.asyncio

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class FakeEtcd(rpc.KVServicer, rpc.AuthServicer):
    """Counts calls per method and answers with the behaviour the test set (default: OK, empty)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.tokens: list[str] = []  # the token each KV call carried
        self.behaviour: dict[str, list[Behaviour]] = {}
        self.logins = 0

    async def _answer(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any],
                      empty: Any) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.tokens.append(dict(context.invocation_metadata() or ()).get("token", ""))
        queue = self.behaviour.get(method)
        if queue:
            return await queue.pop(0)(request, context)
        return empty

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        return await self._answer("Range", request, context, pb.RangeResponse())  # type: ignore[no-any-return]

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return await self._answer("Put", request, context, pb.PutResponse())  # type: ignore[no-any-return]

    async def DeleteRange(self, request: pb.DeleteRangeRequest, context: Any) -> pb.DeleteRangeResponse:
        return await self._answer("DeleteRange", request, context, pb.DeleteRangeResponse())  # type: ignore[no-any-return]

    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        return await self._answer("Txn", request, context, pb.TxnResponse(succeeded=True))  # type: ignore[no-any-return]

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.AuthenticateResponse:
        self.logins += 1
        return pb.AuthenticateResponse(token=f"token-{self.logins}")


def fail(code: grpc.StatusCode, details: str) -> Behaviour:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, details)
    return behaviour


def hang(seconds: float) -> Behaviour:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await asyncio.sleep(seconds)  # a member that applied the write and answers too late
        return pb.TxnResponse(succeeded=True)
    return behaviour


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[list[tuple[FakeEtcd, str]]]:
    """Two fake members on free ports."""
    servers = []
    out = []
    for _ in range(2):
        fake = FakeEtcd()
        server = grpc.aio.server()
        rpc.add_KVServicer_to_server(fake, server)
        rpc.add_AuthServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        out.append((fake, f"127.0.0.1:{port}"))
    yield out
    for server in servers:
        await server.stop(None)


async def both_connected(client: EtcdClient) -> None:
    await eventually(lambda: all(m.channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY
                                 for m in client.members), message="both channels READY")


TXN = ([created_at(b"k", 0)], [put_op(b"k", b"v")])


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN])
async def test_a_failed_write_is_reported_outcome_unknown_and_sent_once(
        fakes: list[tuple[FakeEtcd, str]], code: grpc.StatusCode) -> None:
    (fake, address), _ = fakes
    fake.behaviour = {m: [fail(code, "etcdserver: request timed out")] for m in ("Txn", "Put", "DeleteRange")}
    async with await EtcdClient.connect([address]) as client:
        for call in (client.txn(*TXN, timeout=2), client.put(b"k", b"v", timeout=2), client.delete(b"k", timeout=2)):
            with pytest.raises(EtcdOutcomeUnknownError):
                await call
    # Each write reached etcd exactly once: the client raised instead of sending it again.
    assert fake.calls == {"Txn": 1, "Put": 1, "DeleteRange": 1}


async def test_a_write_past_its_deadline_is_outcome_unknown_and_the_next_goes_elsewhere(
        fakes: list[tuple[FakeEtcd, str]]) -> None:
    (fake, address), (other, address2) = fakes
    for member in (fake, other):
        member.behaviour = {"Txn": [hang(1.0)]}  # whichever member gets the first Txn answers too late
    async with await EtcdClient.connect([address, address2]) as client:
        await both_connected(client)
        with pytest.raises(EtcdOutcomeUnknownError):
            await client.txn(*TXN, timeout=0.2)
        # The late member is avoided for a while: the next Txn goes to the other one.
        assert (await client.txn(*TXN, timeout=5)).succeeded
    assert fake.calls == {"Txn": 1} and other.calls == {"Txn": 1}


async def test_a_read_is_retried_on_another_member_within_its_deadline(fakes: list[tuple[FakeEtcd, str]]) -> None:
    (fake, address), (other, address2) = fakes
    for member in (fake, other):
        member.behaviour = {"Range": [fail(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")]}
    async with await EtcdClient.connect([address, address2]) as client:
        await both_connected(client)
        reply = await client.range(b"k", timeout=2)
    assert isinstance(reply, pb.RangeResponse)
    # Failed on one member, then on the other, then answered.
    assert fake.calls["Range"] + other.calls["Range"] == 3


async def test_a_read_that_never_succeeds_ends_unavailable_at_its_deadline(
        fakes: list[tuple[FakeEtcd, str]]) -> None:
    (fake, address), _ = fakes
    fake.behaviour = {"Range": [fail(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")] * 1000}
    async with await EtcdClient.connect([address]) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(EtcdUnavailableError) as caught:
            await client.range(b"k", timeout=0.5)
        assert not isinstance(caught.value, EtcdOutcomeUnknownError)
        # It ends at its 0.5 s deadline, not after the 1,000 failures; 5 s leaves room for a loaded box.
        assert loop.time() - started < 5.0
    assert fake.calls["Range"] >= 2


async def test_a_rejected_token_means_log_in_again_and_send_once_more(fakes: list[tuple[FakeEtcd, str]]) -> None:
    (fake, address), _ = fakes
    async with await EtcdClient.connect([address], auth=EtcdAuth("sessiond", "secret")) as client:
        assert fake.logins == 1
        # etcd checks the token before anything else, so the refused Txn was not applied.
        fake.behaviour = {"Txn": [fail(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")]}
        assert (await client.txn(*TXN)).succeeded
        assert fake.logins == 2 and fake.calls == {"Txn": 2}
        assert fake.tokens == ["token-1", "token-2"]
        # Refused twice in a row: the second refusal is the caller's to see.
        fake.behaviour = {"Txn": [fail(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")] * 2}
        with pytest.raises(Exception, match="invalid auth token"):
            await client.txn(*TXN)
        assert fake.calls == {"Txn": 4}
