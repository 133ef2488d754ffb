"""SPEC §6.1 with real processes and real faults: an oversized result, a worker that never reads, a
killed watching client, a server stopped with SIGSTOP, and a network partition between a worker and
the server.

Workers are ``SessionWorker`` processes (the library users run) or raw-protocol worker processes;
the server runs in this process when the test reads its engine, and as its own process when the
test stops it or reads its RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from sessiond_client import ActivityError, SessionClient, SessionFailedError, SessionState
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from tests.integration.conftest import (
    OPEN,
    REPO_ROOT,
    ServerFactory,
    Sessiond,
    WorkerProcess,
    eventually,
    options,
)
from tests.integration.faults import ENV as ENV_CHILD
from tests.integration.faults import ServerProcess
from tests.integration.workers.support import worker_pool, workers_of
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio

QUEUE = "bounds-q"
MiB = 1024 * 1024


async def _raw_worker_process(target: str, worker_id: str, *flags: str) -> WorkerProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.rawworker", "--target", target, "--task-queue", QUEUE,
        "--worker-id", worker_id, *flags,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=ENV_CHILD, cwd=REPO_ROOT)
    worker = WorkerProcess(process)
    try:
        await worker.wait_for("registered", timeout=30)
    except BaseException:
        await worker.reap()
        raise
    return worker


# ----------------------------------------------------------------- one message-size limit (acceptance)


@pytest.mark.parametrize(("limit", "result_size"), [
    pytest.param(4 * MiB, 5 * MiB, id="5MiB-result-over-a-4MiB-limit"),
    pytest.param(None, 20 * MiB, id="20MiB-result-over-the-default-16MiB"),
])
async def test_a_too_large_result_fails_that_activity_alone_and_the_worker_keeps_its_stream(
        make_server: ServerFactory, limit: int | None, result_size: int) -> None:
    sessiond = await make_server(**({} if limit is None else {"max_message_size": limit}))
    async with worker_pool() as start, await SessionClient.connect(sessiond.target, default_rpc_timeout=30) as client:
        worker = await start(sessiond.target, QUEUE, max_sessions=2)
        before = (await workers_of(client, QUEUE))[worker.worker_id].connect_time
        bystander = await sessiond.create(QUEUE)  # another caller's session on the same worker
        async with client.create_session(QUEUE) as victim:
            assert victim.info.worker.worker_id == bystander.worker.worker_id
            with pytest.raises(ActivityError) as caught:
                await victim.execute_activity("blob", result_size)

            assert caught.value.type == "ResultTooLarge" and caught.value.non_retryable
            assert str(result_size) in caught.value.message
            for session_id in (victim.id, bystander.session_id):
                assert (await client.get_session_info(session_id)).state is SessionState.OPEN
            assert await victim.execute_activity("echo", "same session") == "same session"
            reply = await sessiond.execute(bystander.session_id, "blob", [1000])
            assert reply.result.data == b"x" * 1000
        after = (await workers_of(client, QUEUE))[worker.worker_id]
        assert after.connect_time == before, "the worker's stream was reconnected"


async def test_a_5_mib_result_under_the_default_limit_comes_back_whole(sessiond: Sessiond) -> None:
    async with worker_pool() as start, await SessionClient.connect(sessiond.target, default_rpc_timeout=30) as client:
        await start(sessiond.target, QUEUE)
        async with client.create_session(QUEUE) as session:
            assert await session.execute_activity("blob", 5 * MiB) == b"x" * (5 * MiB)


# ----------------------------------------------------------------- a worker that never reads


async def test_a_worker_that_never_reads_keeps_server_rss_bounded_under_1_mib_activities() -> None:
    backlog = 8 * MiB
    server = await ServerProcess("--max-worker-backlog", str(backlog)).start()
    worker = None
    try:
        worker = await _raw_worker_process(server.target, "deaf", "--no-read", "--heartbeat-every", "0.2")
        async with grpc.aio.insecure_channel(server.target, options=[
                ("grpc.max_send_message_length", -1)]) as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            session = (await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue=QUEUE))).session
            baseline = server.rss_kb()
            outcomes: dict[str, int] = {}
            payload = session_pb2.Payload(metadata={"encoding": b"binary/plain"}, data=b"x" * MiB)
            request = session_service_pb2.ExecuteActivityRequest(
                session_id=session.session_id, activity_type="echo", input=payload)
            request.start_to_close_timeout.FromSeconds(2)

            async def one() -> None:
                try:
                    await stub.ExecuteActivity(request, timeout=30)
                    outcomes["OK"] = outcomes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] = outcomes.get(error.code().name, 0) + 1

            peaks = []
            for _ in range(10):  # 300 activities of 1 MiB, 30 at a time
                wave = asyncio.gather(*(one() for _ in range(30)))
                peak = server.rss_kb()
                while not wave.done():
                    peak = max(peak, server.rss_kb())
                    await asyncio.wait([wave], timeout=0.05)
                await wave
                peaks.append(max(peak, server.rss_kb()))

            # The stated bound: 320 MiB over the idle server. It covers the backlog (8 MiB) and the
            # requests in flight (30 MiB) with their copies (grpc's buffer, the decoded message, the
            # task), what grpc holds for the stream (~4 MiB) and the allocator's slack, which grows
            # when the box is loaded (measured 170-200 MiB on a quiet box, up to 275 MiB at load
            # average 8-15); unbounded, the server grew by ~2 MiB per activity (673 MiB here). The
            # trend check below is the sharper one: the last five waves peak no higher than the first five.
            growth_mib = (max(peaks) - baseline) / 1024
            assert growth_mib < 320, f"server RSS grew by {growth_mib:.0f} MiB ({outcomes})"
            # Unbounded, the last five waves (150 activities) would add ~300 MiB; the allocator's noise
            # under load reached +36 MiB, so 64 MiB separates the two with room on both sides.
            trend_mib = (max(peaks[5:]) - max(peaks[:5])) / 1024
            assert trend_mib < 64, f"server RSS still grows: +{trend_mib:.0f} MiB over the last 5 waves"
            # Nothing ran (the worker reads nothing): every activity was refused or timed out.
            assert outcomes.get("OK", 0) == 0 and sum(outcomes.values()) == 300, outcomes
            assert outcomes.get("RESOURCE_EXHAUSTED", 0) > 0 and outcomes.get("DEADLINE_EXCEEDED", 0) > 0, outcomes
            reply = await stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=session.session_id))
            assert reply.session.state == OPEN
    finally:
        if worker is not None:
            await worker.reap()
        await server.stop()


# ----------------------------------------------------------------- a killed watching client


async def test_a_sigkilled_client_holding_two_thousand_watches_leaves_no_engine_state(sessiond: Sessiond) -> None:
    async with worker_pool() as start:
        await start(sessiond.target, QUEUE)
        session = await sessiond.create(QUEUE)
        engine = sessiond.server.engine
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.watcher", "--target", sessiond.target,
            "--session-id", session.session_id, "--count", "2000",
            stdout=asyncio.subprocess.PIPE, env=ENV_CHILD, cwd=REPO_ROOT)
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert json.loads(line) == {"event": "watching", "count": 2000}
            assert session.session_id in engine.watches

            process.send_signal(signal.SIGKILL)
            await process.wait()

            await eventually(lambda: not engine.watches, timeout=30, message="watch state left after SIGKILL")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert (await sessiond.get(session.session_id)).state == OPEN


# ----------------------------------------------------------------- the server's own stall


async def test_a_server_stopped_longer_than_heartbeat_timeout_fails_no_session_of_a_live_worker() -> None:
    timeout = 2.0
    server = await ServerProcess().start()
    try:
        async with worker_pool() as start, grpc.aio.insecure_channel(server.target) as channel, \
                contextlib.AsyncExitStack() as stack:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            workers = [await start(server.target, QUEUE, max_sessions=8) for _ in range(4)]
            frozen = await _raw_worker_process(server.target, "frozen")
            stack.push_async_callback(frozen.reap)
            sessions = [(await stub.CreateSession(session_service_pb2.CreateSessionRequest(
                task_queue=QUEUE, options=options(heartbeat=timeout)))).session for _ in range(32)]
            live = [s for s in sessions if s.worker.worker_id != "frozen"]
            doomed = [s for s in sessions if s.worker.worker_id == "frozen"]
            assert len(live) >= 24 and {s.worker.worker_id for s in live} == {w.worker_id for w in workers}

            async def states() -> dict[str, session_pb2.Session]:
                out = {}
                for s in sessions:
                    request = session_service_pb2.GetSessionInfoRequest(session_id=s.session_id)
                    out[s.session_id] = (await stub.GetSessionInfo(request)).session
                return out

            # A stall longer than heartbeat_timeout: the live workers keep sending all along; a
            # worker frozen with the server really is silent, and must still be found out.
            server.signal(signal.SIGSTOP)
            frozen.signal(signal.SIGSTOP)
            await asyncio.sleep(1.75 * timeout)  # the fault itself, not a synchronisation
            server.signal(signal.SIGCONT)

            # Judged over three heartbeat timeouts after resuming: no live worker's session fails.
            loop = asyncio.get_running_loop()
            until = loop.time() + 3 * timeout
            while loop.time() < until:
                seen = await states()
                causes = [session_pb2.FailureCause.Name(seen[s.session_id].failure.cause)
                          for s in live if seen[s.session_id].state != OPEN]
                assert not causes, f"{len(causes)} sessions of live workers failed: {causes}"
                await asyncio.sleep(0.2)
            seen = await states()
            for s in doomed:
                assert seen[s.session_id].failure.cause == session_pb2.FAILURE_CAUSE_HEARTBEAT_TIMEOUT
    finally:
        await server.stop()


# ----------------------------------------------------------------- a partitioned worker


async def test_a_partitioned_worker_stops_the_failed_sessions_activity_within_its_heartbeat_timeout(
        sessiond: Sessiond, tmp_path: Path) -> None:
    timeout = 2.0
    proxy = await TcpProxy(sessiond.target).start()
    try:
        async with worker_pool() as start, \
                await SessionClient.connect(sessiond.target, default_rpc_timeout=30) as client:
            await start(proxy.address, QUEUE)
            marker = tmp_path / "activity"
            async with client.create_session(QUEUE, heartbeat_timeout=timeout) as session:
                running = asyncio.ensure_future(
                    session.execute_activity("wait_cancelled", str(marker), 120.0, start_to_close_timeout=300))
                await eventually(lambda: Path(str(marker) + ".started").exists(), timeout=10)
                proxy.blackhole()
                cut = time.time()

                with pytest.raises(SessionFailedError):
                    await running
                assert (await client.get_session_info(session.id)).state is SessionState.FAILED
                # The worker heard nothing for heartbeat_timeout: it stopped the activity itself,
                # although the partition still holds (the server's SessionEnded cannot reach it).
                await eventually(marker.exists, timeout=timeout + 30,  # a guard; the bound is below
                                 message="the partitioned worker still runs the failed session's activity")
                outcome = json.loads(marker.read_text())
                assert outcome["cancelled"] is True and outcome["reason"] == "SERVER_UNREACHABLE"
                # When the worker stopped it (the activity's own clock, same machine), not when this
                # test got to look: the worker's silence timer is what is bounded.
                stopped_after = outcome["at"] - cut
                assert stopped_after <= timeout + 1.5, f"stopped {stopped_after:.2f} s after the cut"
    finally:
        proxy.resume()
        await proxy.close()
