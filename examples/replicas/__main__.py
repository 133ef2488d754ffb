"""``make demo-cluster``: three sessiond replicas on a 3-member etcd; the replica owning a running
session's worker is killed (kill -9) mid-activity, and the session goes on through another replica.

Everything runs on 127.0.0.1 and free ports: etcd members (Debian's ``etcd-server``; ``make
deps-etcd`` installs it as root), three ``sessiond serve --store etcd://...`` replicas, one worker
process that knows every replica's address, and this process as the caller (connected to a replica
that does NOT own the worker, so its calls are forwarded). Nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sessiond_client import OwnerUnavailableError, SessionClient

from examples.common import start_sessiond
from sessiond.testing.etcd_cluster import EtcdCluster, find_etcd

QUEUE = "replicas-demo"
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


async def caller(replicas: dict[str, subprocess.Popen[bytes]], worker_owner: str,
                 worker: subprocess.Popen[bytes]) -> None:
    via = next(address for address in replicas if address != worker_owner)
    print(f"caller connected to replica {via} (the worker is on {worker_owner}: calls are forwarded)")
    async with await SessionClient.connect(via) as client, client.create_session(QUEUE) as session:
        print(f"session {session.id} OPEN on worker {session.info.worker.worker_id}")
        print(f"  step 1 -> {await session.execute_activity('step', 1)}")
        running = asyncio.create_task(session.execute_activity("slow_step", 2))
        assert worker.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), 30)
        if not line.startswith(b"started slow_step"):
            raise SystemExit(f"the worker did not start step 2: {line!r}")
        print(f"kill -9 of replica {worker_owner}, which owns the worker, mid-activity")
        replicas[worker_owner].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            await running
            print("  step 2 finished (the kill came after its answer)")
        except OwnerUnavailableError as error:
            print(f"  step 2: {type(error).__name__} ({error.reason}): outcome unknown, it may have run")
        deadline = time.monotonic() + 30
        while True:
            try:
                result = await session.execute_activity("step", 3)
                break
            except OwnerUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # the worker is moving to a live replica: poll until the deadline
        print(f"  step 3 -> {result}  ({(time.monotonic() - killed) * 1000:.0f} ms after the kill)")
        info = await client.get_session_info(session.id)
        print(f"session {info.session_id} is {info.state.name} on worker {info.worker.worker_id}: "
              f"same id, survived its replica")
    print("demo OK")


def main() -> int:
    if find_etcd() is None:
        print("etcd is needed: run `make deps-etcd` (as root) or apt-get install etcd-server", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sessiond-demo-") as tmp, EtcdCluster(Path(tmp), 3) as etcd:
        print(f"etcd: 3 members at {', '.join(etcd.endpoints)}")
        store = f"etcd://{','.join(etcd.endpoints)}/demo?lease_ttl=5&failover_window=10"
        replicas: dict[str, subprocess.Popen[bytes]] = {}
        worker = None
        try:
            for _ in range(3):
                replica, address = start_sessiond("--store", store, "--log-level", "ERROR", env=ENV, cwd=ROOT)
                replicas[address] = replica
            print(f"sessiond: 3 replicas at {', '.join(replicas)}")
            targets = ",".join(replicas)
            worker = subprocess.Popen([sys.executable, "-m", "examples.replicas.worker", "--target", targets,
                                       "--task-queue", QUEUE], cwd=ROOT, env=ENV, stdout=subprocess.PIPE)
            assert worker.stdout is not None
            line = worker.stdout.readline().decode().strip()
            if not line.startswith("registered"):
                raise SystemExit(f"the worker did not register: {line!r}")
            owner = next(iter(replicas))  # the worker connects to the first address that answers
            print(f"worker {line.split()[1]} registered at {owner} (it knows all three addresses)")
            asyncio.run(caller(replicas, owner, worker))
        finally:
            for proc in [*([worker] if worker else []), *replicas.values()]:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
