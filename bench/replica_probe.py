"""The replicas scenario (SPEC §6.5), as one child process of ``python -m bench``: it starts a
3-member etcd (Debian's etcd 3.4 here), sessiond replicas and workers, and measures in the same run:

* create+complete at 1 and 64 in flight, and execute_activity at 1 in flight: one replica on etcd
  next to ``--store memory`` (alternating order, ``--reps`` repetitions);
* execute_activity through a replica that does not own the session (forwarded) next to the owner;
* failover: kill -9 of the replica owning a worker with an open session -> the store shows the
  worker owned by a live replica (adopted, same session id), ``--trials`` times;
* etcd leader kill: create+complete pairs one after another on a replica; kill -9 of the etcd leader
  -> the first pair started after the kill that succeeds (writes succeed again), ``--leader-trials``
  times (the member is restarted between trials).

Prints ``{"event": "result", ...}`` (the runner's child protocol).

    python -m bench.replica_probe --reps 2 --trials 10 --logs bench/out/logs
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from bench.common import emit
from bench.procs import PY, Proc, free_port, run_once, wait_port
from sessiond.store.etcd import EtcdClient
from sessiond.store.etcd.store import Keys
from sessiond.store.records import store_pb2
from sessiond.testing.etcd_cluster import EtcdCluster

QUEUE = "bench"


class Probe:
    def __init__(self, etcd: EtcdCluster, logs: Path, warmup: float, duration: float) -> None:
        self.etcd = etcd
        self.logs = logs
        self.warmup = warmup
        self.duration = duration
        self.n = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"replicas-{self.n:03d}-{what}"

    def store(self, cluster: str) -> str:
        return f"etcd://{','.join(self.etcd.endpoints)}/{cluster}?lease_ttl=5&failover_window=10"

    def server(self, store: str | None) -> tuple[Proc, str]:
        port = free_port()
        argv = [PY, "-m", "sessiond", "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"]
        if store is not None:
            argv += ["--store", store]
        proc = Proc(self.name("sessiond" if store is None else "replica"), argv, self.logs)
        wait_port(port, proc, 30)
        return proc, f"127.0.0.1:{port}"

    def raw_worker(self, target: str) -> Proc:
        proc = Proc(self.name("worker"), [PY, "-m", "bench.worker", "--target", target, "--kind", "sessiond",
                                          "--task-queue", QUEUE, "--streams", "1", "--capacity", "1000",
                                          "--separate-channels"], self.logs)
        proc.wait_event("ready", 60)
        return proc

    def phases(self, target: str, phases: list[str], server: Proc, worker: Proc) -> dict[str, Any]:
        args = [PY, "-m", "bench.loadgen", "run", "--target", target, "--phases", ",".join(phases),
                "--warmup", str(self.warmup), "--duration", str(self.duration), "--server-pid", str(server.pid),
                "--worker-pid", str(worker.pid), "--task-queue", QUEUE]
        result = run_once(self.name("loadgen"), args, self.logs,
                          timeout=60 + len(phases) * (self.warmup + self.duration) * 3)
        return {p["phase"]: p for p in result["phases"]}


def _stop(*procs: Proc) -> None:
    for proc in procs:
        proc.stop(timeout=5.0)


def throughput(probe: Probe, reps: int) -> list[dict[str, Any]]:
    """memory vs one etcd replica, cc:1, cc:64, activity:1; order alternates per rep."""
    out = []
    for rep in range(reps):
        row: dict[str, Any] = {}
        for mode in (("memory", "etcd") if rep % 2 == 0 else ("etcd", "memory")):
            store = None if mode == "memory" else probe.store(f"bench{uuid.uuid4().hex[:8]}")
            server, target = probe.server(store)
            worker = probe.raw_worker(target)
            try:
                row[mode] = probe.phases(target, ["cc:1", "cc:64", "activity:1"], server, worker)
            finally:
                _stop(worker, server)
        out.append(row)
    return out


def forwarded(probe: Probe, reps: int) -> list[dict[str, Any]]:
    """execute_activity at 1 in flight on the owner replica, then through a replica that forwards."""
    out = []
    for _ in range(reps):
        store = probe.store(f"bench{uuid.uuid4().hex[:8]}")
        owner, owner_target = probe.server(store)
        other, other_target = probe.server(store)
        worker = probe.raw_worker(owner_target)
        try:
            direct = probe.phases(owner_target, ["activity:1"], owner, worker)["activity:1"]
            via = probe.phases(other_target, ["activity:1"], other, worker)["activity:1"]
            out.append({"direct": direct, "forwarded": via})
        finally:
            _stop(worker, other, owner)
    return out


async def _owner(etcd: EtcdClient, keys: Keys, worker_id: str) -> str | None:
    kv = await etcd.get(keys.worker((QUEUE, worker_id)))
    return None if kv is None else store_pb2.WorkerEntry.FromString(kv.value).owner_replica


async def failover(probe: Probe, trials: int) -> list[dict[str, Any]]:
    """kill -9 of the replica owning a library worker with one open session -> owned by the other
    replica (its sessions adopted: same id, still OPEN), in ms."""
    out = []
    async with await EtcdClient.connect(probe.etcd.endpoints) as etcd:
        for trial in range(trials):
            cluster = f"bench{uuid.uuid4().hex[:8]}"
            keys = Keys(f"/sessiond/{cluster}/".encode())
            store = probe.store(cluster)
            first, first_target = probe.server(store)
            second, second_target = probe.server(store)
            worker = Proc(probe.name("lib-worker"), [PY, "-m", "bench.lib_workers", "--target",
                                                     f"{first_target},{second_target}", "--task-queue", QUEUE,
                                                     "--count", "1", "--prefix", f"f{trial}", "--capacity", "4"],
                          probe.logs)
            try:
                worker.wait_event("ready", 60)
                worker_id = f"f{trial}-0"
                async with grpc.aio.insecure_channel(second_target) as channel:
                    stub = session_service_pb2_grpc.SessionServiceStub(channel)
                    created = await stub.CreateSession(session_service_pb2.CreateSessionRequest(
                        task_queue=QUEUE, options=session_pb2.SessionOptions(
                            creation_timeout=duration_pb2.Duration(seconds=10))), timeout=20)
                    before = await _owner(etcd, keys, worker_id)
                    killed = time.monotonic()
                    first.send(signal.SIGKILL)
                    while True:
                        owner = await _owner(etcd, keys, worker_id)
                        if owner is not None and owner != before:
                            break
                        if time.monotonic() - killed > 30:
                            raise RuntimeError("the worker was not adopted within 30 s")
                        await asyncio.sleep(0.002)
                    adopted_ms = (time.monotonic() - killed) * 1000
                    info = await stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(
                        session_id=created.session.session_id), timeout=10)
                    out.append({"adopted_ms": round(adopted_ms, 1),
                                "same_session_open": info.session.state == session_pb2.SESSION_STATE_OPEN})
            finally:
                _stop(worker, second, first)
    return out


async def _pair(stub: Any, request_id: str, timeout: float) -> None:
    created = await stub.CreateSession(session_service_pb2.CreateSessionRequest(
        task_queue=QUEUE, request_id=request_id, options=session_pb2.SessionOptions(
            creation_timeout=duration_pb2.Duration(seconds=int(timeout)))), timeout=timeout)
    await stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=created.session.session_id),
                               timeout=timeout)


async def leader_kill(probe: Probe, trials: int) -> list[dict[str, Any]]:
    """kill -9 of the etcd leader while one replica serves create+complete pairs one after another
    -> the first pair started after the kill completes (ms), and the failed attempts meanwhile."""
    out = []
    for trial in range(trials):
        server, target = probe.server(probe.store(f"bench{uuid.uuid4().hex[:8]}"))
        worker = probe.raw_worker(target)
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = session_service_pb2_grpc.SessionServiceStub(channel)
                for i in range(20):  # warm: the replica's lease, the worker's claim, the channels
                    await _pair(stub, f"warm-{trial}-{i}", 10)
                leader = await probe.etcd.leader()
                killed = time.monotonic()
                probe.etcd.kill(leader)
                failed, attempt = 0, 0
                while True:
                    attempt += 1
                    try:
                        await _pair(stub, f"after-{trial}-{attempt}", 5)
                        break
                    except grpc.aio.AioRpcError:
                        failed += 1
                        if time.monotonic() - killed > 60:
                            raise RuntimeError("writes did not succeed again within 60 s") from None
                recovered_ms = (time.monotonic() - killed) * 1000
                new_leader = await probe.etcd.leader()
                out.append({"writes_again_ms": round(recovered_ms, 1), "failed_attempts": failed,
                            "replica_alive": server.alive(), "leader": leader.name, "new_leader": new_leader.name})
        finally:
            _stop(worker, server)
            for member in probe.etcd.members:
                if not member.running:
                    probe.etcd.restart(member)
            await probe.etcd.wait_healthy()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the result event."""
    parser = argparse.ArgumentParser(prog="bench.replica_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--leader-trials", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as tmp, EtcdCluster(Path(tmp), 3) as etcd:
        probe = Probe(etcd, args.logs, args.warmup, args.duration)
        result = {
            "throughput": throughput(probe, args.reps),
            "forwarded": forwarded(probe, args.reps),
            "failover": asyncio.run(failover(probe, args.trials)),
            "leader_kill": asyncio.run(leader_kill(probe, args.leader_trials)),
            "etcd_version": etcd_version(),
        }
    emit("result", **result)
    return 0


def etcd_version() -> str:
    import subprocess

    from sessiond.testing.etcd_cluster import find_etcd

    binary = find_etcd() or "etcd"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
