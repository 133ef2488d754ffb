"""Probe the etcd store's write path: the placement Txn of distributed.md §3.2 through
``sessiond.store.etcd.EtcdClient``, against the bare generated stub in the same run.

    python -m bench.etcd_probe                       # starts its own 3-member etcd on 127.0.0.1
    python -m bench.etcd_probe --endpoints h1:2379,h2:2379,h3:2379
    python -m bench.etcd_probe --failover 5 --json bench/out/etcd_probe.json

Each Txn is ``If MOD(workers/q/w) == rev_owner Then put sessions/<sid> (260 B), put wsess/q/w/<sid>
Else get workers/q/w`` over 100 worker keys: the fenced placement write. Reported per mode (``client``
= the wrapper, ``stub`` = the generated stub on the same member and channel, the baseline) and per
concurrency (1 and 64 in flight): Txn/s, latency p50/p99, client CPU per Txn (this process), and the
etcd members' CPU per Txn (when the probe started them). Rounds alternate the modes; medians and
min-max spreads over rounds are printed. ``--failover N`` then kills the etcd leader N times during
writes and reports how long until a write started after the kill succeeds.

The machine is shared: read ratios (client vs stub) more than absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.stats import latency_summary, spread
from sessiond.store.etcd import EtcdClient, EtcdError
from sessiond.store.etcd.api import v3_subset_pb2 as pb
from sessiond.store.etcd.ops import get_op, modified_at, put_op
from sessiond.testing.etcd_cluster import EtcdCluster, EtcdMember

WORKERS = 100
RECORD = b"r" * 260
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _member_cpu(members: list[EtcdMember]) -> float:
    """CPU seconds used so far by the running members (user + system, from /proc)."""
    total = 0.0
    for member in members:
        if member.running:
            fields = Path(f"/proc/{member.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


class Probe:
    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.fences: list[tuple[bytes, int]] = []

    async def setup(self) -> None:
        for i in range(WORKERS):
            key = self.prefix + b"workers/q/w%03d" % i
            self.fences.append((key, (await self.client.put(key, b"owner=probe")).header.revision))

    def parts(self, n: int) -> tuple[list[pb.Compare], list[pb.RequestOp], list[pb.RequestOp]]:
        """The compares, success and failure operations of the n-th placement."""
        worker_key, fence = self.fences[n % WORKERS]
        sid = uuid.uuid4().hex.encode()
        return ([modified_at(worker_key, fence)],
                [put_op(self.prefix + b"sessions/" + sid, RECORD),
                 put_op(self.prefix + b"wsess/q/" + worker_key.rsplit(b"/", 1)[1] + b"/" + sid, b"")],
                [get_op(worker_key)])

    async def one(self, mode: str, n: int) -> None:
        compare, success, failure = self.parts(n)
        if mode == "client":
            reply = await self.client.txn(compare, success, failure, timeout=10)
        else:  # the baseline: the same request on the same member's channel, straight through the stub
            member = await self.client.ready_member(asyncio.get_running_loop().time() + 10)
            request = pb.TxnRequest(compare=compare, success=success, failure=failure)
            reply = await member.kv.Txn(request, timeout=10, metadata=self.client.metadata)
        assert reply.succeeded

    async def run(self, mode: str, inflight: int, count: int, members: list[EtcdMember]) -> dict[str, Any]:
        latencies: list[float] = []
        next_n = 0

        async def lane() -> None:
            nonlocal next_n
            while next_n < count:
                n = next_n
                next_n += 1
                started = time.perf_counter()
                await self.one(mode, n)
                latencies.append(time.perf_counter() - started)

        cpu, etcd_cpu, wall = time.process_time(), _member_cpu(members), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        etcd_cpu = _member_cpu(members) - etcd_cpu
        return {"mode": mode, "inflight": inflight, "count": count, "txn_per_s": round(count / wall, 1),
                **latency_summary(latencies), "client_cpu_us_per_txn": round(cpu / count * 1e6, 1),
                "etcd_cpu_us_per_txn": round(etcd_cpu / count * 1e6, 1) if members else None}


async def one_failover(cluster: EtcdCluster) -> float:
    """kill -9 the leader during writes (4 writers, 0.5 s deadlines); seconds until a Txn started
    after the kill succeeds. The killed member is restarted on its data afterwards."""
    await cluster.wait_healthy(timeout=30)
    leader = await cluster.leader()
    loop = asyncio.get_running_loop()
    killed_at: list[float] = []
    recovered: list[float] = []
    async with await EtcdClient.connect(cluster.endpoints) as client:
        probe = Probe(client, b"/probe/failover/%s/" % uuid.uuid4().hex.encode())
        await probe.setup()

        async def writer(n: int) -> None:
            while not recovered:
                n += 4
                began = loop.time()
                try:
                    await client.txn(*probe.parts(n), timeout=0.5)
                except EtcdError:
                    continue
                if killed_at and began > killed_at[0] and not recovered:
                    recovered.append(loop.time() - killed_at[0])

        writers = [asyncio.create_task(writer(i)) for i in range(4)]
        await asyncio.sleep(0.5)  # writes are flowing before the fault (a measurement, not a synchronisation)
        cluster.kill(leader)
        killed_at.append(loop.time())
        await asyncio.wait_for(asyncio.gather(*writers), 30)
    cluster.restart(leader)
    return recovered[0]


async def failover_trials(cluster: EtcdCluster, trials: int) -> list[float]:
    """:func:`one_failover` ``trials`` times; the cluster is healthy again at the end."""
    stalls = [await one_failover(cluster) for _ in range(trials)]
    await cluster.wait_healthy(timeout=30)
    return stalls


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cluster: EtcdCluster | None = None
    tmp = None
    if args.endpoints:
        endpoints = args.endpoints.split(",")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="etcd-probe-")
        cluster = EtcdCluster(Path(tmp.name), 3).start()
        endpoints = cluster.endpoints
    try:
        members = cluster.members if cluster else []
        async with await EtcdClient.connect(endpoints) as client:
            status = await client.status()
            probe = Probe(client, b"/probe/%s/" % uuid.uuid4().hex.encode())
            await probe.setup()
            for mode in ("stub", "client"):  # warm-up: channels, code paths
                await probe.run(mode, 8, 200, [])
            rows: list[dict[str, Any]] = []
            load_at_start = os.getloadavg()
            for inflight, count in ((1, args.count1), (64, args.count64)):
                for round_ in range(args.rounds):
                    # Alternate which mode goes first, so a load change on the shared box hits both alike.
                    for mode in ("stub", "client") if round_ % 2 == 0 else ("client", "stub"):
                        rows.append(await probe.run(mode, inflight, count, members))
        failover = await failover_trials(cluster, args.failover) if cluster and args.failover else []
        return {"etcd_version": status.version, "members": len(endpoints), "rounds": args.rounds,
                "load_avg_start": load_at_start, "load_avg": os.getloadavg(), "rows": rows,
                "leader_kill_stall_s": failover}
    finally:
        if cluster is not None:
            cluster.stop()
        if tmp is not None:
            tmp.cleanup()


def render(result: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in result["load_avg_start"][:1] + result["load_avg"][:1])
    lines = [f"etcd {result['etcd_version']}, {result['members']} members, {result['rounds']} rounds per cell "
             f"(median [min-max]); 1-min load average at start, end: {load}",
             "",
             "| mode | in flight | Txn/s | p50 ms | p99 ms | client CPU µs/Txn | etcd CPU µs/Txn |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def cell(values: list[Any]) -> str:
        s = spread(values)
        if s["median"] is None:
            return "–"
        return f"{s['median']:.4g} [{s['min']:.4g}–{s['max']:.4g}]"

    for inflight in (1, 64):
        for mode in ("stub", "client"):
            rows = [r for r in result["rows"] if r["mode"] == mode and r["inflight"] == inflight]
            lines.append(f"| {mode} | {inflight} | " + " | ".join(cell([r[k] for r in rows]) for k in (
                "txn_per_s", "p50_ms", "p99_ms", "client_cpu_us_per_txn", "etcd_cpu_us_per_txn")) + " |")
    for inflight in (1, 64):
        def median(mode: str, key: str, inflight: int = inflight) -> float:
            rows = [r[key] for r in result["rows"] if r["mode"] == mode and r["inflight"] == inflight]
            return float(statistics.median(rows))
        lines.append(f"client/stub at {inflight} in flight: CPU per Txn x"
                     f"{median('client', 'client_cpu_us_per_txn') / median('stub', 'client_cpu_us_per_txn'):.2f}, "
                     f"p50 x{median('client', 'p50_ms') / median('stub', 'p50_ms'):.2f}")
    if result["leader_kill_stall_s"]:
        stalls = result["leader_kill_stall_s"]
        lines.append(f"leader kill -9 -> writes OK again after {statistics.median(stalls):.2f} s median "
                     f"[{min(stalls):.2f}–{max(stalls):.2f}] over {len(stalls)} kills")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", help="host:port,... of an existing etcd (default: start 3 members here)")
    parser.add_argument("--rounds", type=int, default=6, help="blocks per mode and concurrency (alternating)")
    parser.add_argument("--count1", type=int, default=300, help="Txns per block at 1 in flight")
    parser.add_argument("--count64", type=int, default=2000, help="Txns per block at 64 in flight")
    parser.add_argument("--failover", type=int, default=0, help="leader kill trials (own cluster only)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
