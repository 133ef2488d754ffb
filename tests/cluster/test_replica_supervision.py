"""A replica whose long-lived background task dies fences itself (no replica serves half-alive).

Each loop a replica runs until it stops — the janitor, the free-slot publisher, the mirror of
waiting creates, and the etcd client's watch and keepalive streams — is made to hit a bug (an
exception it does not expect, raised from inside the real loop). Before, the task ended silently
(at best "Task exception was never retrieved" when collected) and the replica went on serving
without it. Now the error is logged once at ERROR with its traceback, and the replica fences itself
the way a lost lease does: it stops, and its process exits non-zero (the last test), so its
supervisor starts it again and the other replicas adopt its workers. A replica stopped on purpose
reports nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio

from sessiond.config import ServerConfig
from sessiond.server import SessiondServer, create_server
from sessiond.server.cluster import Cluster
from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.errors import EtcdUnavailableError
from sessiond.testing.etcd_cluster import EtcdCluster
from tests.cluster.conftest import eventually
from tests.cluster.replicas import Replicas, retried
from tests.cluster.test_replicas import OPEN, QUEUE, Caller, start_owned, wait_owned
from tests.integration.faults import ServerProcess
from tests.integration.workers.support import worker_pool

pytestmark = pytest.mark.asyncio(loop_scope="function")

INJECTED = "injected bug"


class Injected(RuntimeError):
    """The fault: an exception no loop of a replica catches."""


def _bug(*_: Any, **__: Any) -> NoReturn:
    raise Injected(INJECTED)


async def _async_bug(*_: Any, **__: Any) -> NoReturn:
    raise Injected(INJECTED)


class _Exploding(dict[Any, Any]):
    """The keeper's lease table, made to raise on the next renewal's lookup."""

    def get(self, *_: Any) -> NoReturn:
        raise Injected(INJECTED)


@pytest_asyncio.fixture(loop_scope="function")
async def replica(etcd_cluster: EtcdCluster) -> AsyncIterator[SessiondServer]:
    """One replica in this process (failover window 2 s: the janitor passes every 0.5 s)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = f"etcd://{','.join(etcd_cluster.endpoints)}/t{uuid.uuid4().hex[:10]}?lease_ttl=5&failover_window=2"
    server, _ = await create_server(ServerConfig(listen=f"127.0.0.1:{port}", store=store))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def _poke_fifo(cluster: Cluster, etcd: EtcdClient) -> None:
    """A change under the waiting creates' prefix: the watch stream and the mirror both see it."""
    await etcd.put(cluster.admission.board.prefix + b"poke", b"")


def _janitor(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, etcd: EtcdClient) -> Awaitable[None] | None:
    monkeypatch.setattr(cluster.store, "orphaned_workers", _async_bug)  # its next pass
    return None


def _free_slots(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, etcd: EtcdClient) -> Awaitable[None] | None:
    monkeypatch.setattr(cluster.admission, "_all_local_free", _bug)
    cluster.admission.local_changed()  # a step of the engine: the publisher looks now
    return None


def _waiting_board(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, etcd: EtcdClient) -> Awaitable[None] | None:
    monkeypatch.setattr(cluster.admission.board, "_apply", _bug)
    return _poke_fifo(cluster, etcd)


def _watch_stream(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, etcd: EtcdClient) -> Awaitable[None] | None:
    monkeypatch.setattr(cluster.store.client.watcher, "_dispatch", _bug)
    return _poke_fifo(cluster, etcd)


def _keepalive_stream(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, etcd: EtcdClient
                      ) -> Awaitable[None] | None:
    keeper = cluster.store.client.keeper
    monkeypatch.setattr(keeper, "_leases", _Exploding(keeper._leases))  # the next renewal (TTL/3)
    return None


Inject = Callable[[Cluster, pytest.MonkeyPatch, EtcdClient], Awaitable[None] | None]


@pytest.mark.parametrize(("task", "inject"), [
    ("sessiond-janitor", _janitor),
    ("sessiond-free-slots", _free_slots),
    ("etcd-waiting-board", _waiting_board),
    ("etcd-watch", _watch_stream),
    ("etcd-lease-keepalive", _keepalive_stream),
])
async def test_a_background_task_that_dies_is_logged_once_and_fences_the_replica(
        replica: SessiondServer, etcd: EtcdClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        task: str, inject: Inject) -> None:
    cluster = replica.engine.cluster
    assert cluster is not None and not cluster.fenced.is_set()
    caplog.set_level(logging.WARNING)
    trigger = inject(cluster, monkeypatch, etcd)
    if trigger is not None:
        await trigger
    await asyncio.wait_for(cluster.fenced.wait(), 20)

    died = [r for r in caplog.records if "stopped unexpectedly" in r.getMessage()]
    assert len(died) == 1, [r.getMessage() for r in died]
    [record] = died
    assert record.levelno == logging.ERROR and task in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], Injected)  # with its traceback
    assert cluster.fenced_reason is not None and task in cluster.fenced_reason
    assert cluster.store.fenced.is_set()  # it writes nothing more
    assert any(r.levelno == logging.ERROR and "replica fenced itself" in r.getMessage() for r in caplog.records)
    assert replica.engine._stopping  # the fenced path: worker streams end, the server stops


async def test_a_watch_whose_stream_died_ends_with_an_error_and_the_client_reports_it_once(
        etcd: EtcdClient, prefix: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The etcd client alone (no store): its open watches do not wait for ever on a dead stream."""
    reasons: list[str] = []
    etcd.on_stream_failed.append(reasons.append)
    watch = await etcd.watch(prefix + b"k")
    monkeypatch.setattr(etcd.watcher, "_dispatch", _bug)
    await etcd.put(prefix + b"k", b"v")

    async def read() -> None:
        async for _batch in watch:
            pass

    with pytest.raises(EtcdUnavailableError, match="etcd watch stream failed"):
        await asyncio.wait_for(read(), 20)
    assert reasons == [f"background task etcd-watch raised Injected('{INJECTED}')"]
    assert etcd.stream_failure == reasons[0]


async def test_a_replica_stopped_on_purpose_reports_no_dead_task(
        replica: SessiondServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cluster = replica.engine.cluster
    assert cluster is not None
    await replica.stop(0)  # cancels every loop above
    assert not cluster.fenced.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_waiting_creates_ticket_is_removed_by_a_task_the_replica_holds_then_forgets_or_stops(
        replica: SessiondServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A create that stops waiting leaves its ticket to a background removal: the replica holds that
    task while it runs (the loop keeps only weak references to tasks), forgets it once done, and
    cancels one still running when it stops (the ticket then goes with its lease), without an error."""
    caplog.set_level(logging.WARNING)
    cluster = replica.engine.cluster
    assert cluster is not None
    admission = cluster.admission
    removing, release = asyncio.Event(), asyncio.Event()
    dequeue = admission.board.dequeue

    async def held_dequeue(task_queue: str, ticket: str) -> None:
        removing.set()
        await release.wait()
        await dequeue(task_queue, ticket)

    monkeypatch.setattr(admission.board, "dequeue", held_dequeue)
    tickets = admission.board.prefix + f"t/{QUEUE}/".encode()

    async def tickets_are(count: int) -> bool:
        return len((await cluster.store.client.get_prefix(tickets, keys_only=True)).kvs) == count

    caller = Caller(replica.engine.config.listen)
    try:
        for stop_while_removing in (False, True):
            removing.clear()
            create = asyncio.create_task(caller.create(creation=60))  # no worker of QUEUE: it waits
            await eventually(lambda: tickets_are(1), timeout=10, message="the create waits with a ticket")
            create.cancel()
            await asyncio.gather(create, return_exceptions=True)
            await asyncio.wait_for(removing.wait(), 10)
            [removal] = admission._dequeues
            assert not removal.done()
            if stop_while_removing:
                await replica.stop(0)
                assert removal.cancelled() and not admission._dequeues
            else:
                release.set()
                await eventually(lambda: tickets_are(0), timeout=10, message="the ticket is removed")
                await eventually(lambda: not admission._dequeues, timeout=10, message="the removal is forgotten")
                release.clear()
    finally:
        await caller.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_replica_process_whose_janitor_dies_exits_non_zero_and_its_worker_moves(
        etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    """Real processes: two replicas, the first one's janitor made to hit a bug while it owns a
    worker with two open sessions. That replica logs the error with its traceback, fences itself
    and exits 2 with one line saying why; the worker moves to the other replica with its sessions,
    which stay OPEN and run activities."""
    crash = tmp_path / "crash"
    group = Replicas(etcd_cluster, 2)
    doomed = group.servers[0] = ServerProcess("--store", group.store, "--crash-when", str(crash),
                                              module="tests.cluster.crashing_replica")
    async with await EtcdClient.connect(etcd_cluster.endpoints) as etcd, worker_pool() as start:
        await group.start()
        survivor = group.targets[1]  # known once started (a replica whose port was taken moves)
        caller = Caller(survivor)
        try:
            worker = await start_owned(start, group, etcd, doomed.target, group.all_targets, QUEUE,  # doomed first
                                       max_sessions=2, worker_id="kept")
            ids = [(await caller.create()).session_id for _ in range(2)]
            crash.touch()  # the janitor's next pass (every 2 s with the tests' failover window)
            assert doomed.process is not None
            code = await asyncio.wait_for(doomed.process.wait(), 30)
            log = await doomed.stop()
            assert code == 2, log
            assert "background task sessiond-janitor stopped unexpectedly" in log, log
            assert "Traceback" in log and "RuntimeError: injected: the janitor's pass hit a bug" in log, log
            assert "sessiond: this replica fenced itself (background task sessiond-janitor raised" in log, log
            await wait_owned(group, etcd, worker, survivor)
            for sid in ids:
                assert (await caller.get(sid)).state == OPEN
                assert await retried(lambda sid=sid: caller.execute(sid, "echo", sid)) == sid
        except BaseException:
            print(await group.stop())
            raise
        finally:
            await caller.close()
            await group.stop()
