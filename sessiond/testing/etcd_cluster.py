"""A local etcd cluster on 127.0.0.1 and free ports: start, health, leader, and faults.

Used by the cluster test tier (``tests/cluster``), ``bench/etcd_probe.py`` and demos. Members are
real ``etcd`` processes (Debian's ``etcd-server`` package, or any etcd >= 3.4 on PATH), each with
its own data directory and log file under ``base_dir``::

    with EtcdCluster(tmp_path) as cluster:      # 3 members, healthy when the block starts
        client = await EtcdClient.connect(cluster.endpoints)
        leader = await cluster.leader()
        cluster.kill(leader)                     # kill -9
        cluster.restart(leader)                  # same name, ports and data directory
        await cluster.wait_healthy()

Everything waits by polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["ClientTLSFiles", "EtcdCluster", "EtcdMember", "EtcdStartError", "find_etcd"]

HOST = "127.0.0.1"


class EtcdStartError(RuntimeError):
    """A member did not become healthy in time (its log's tail is in the message)."""


def find_etcd() -> str | None:
    """The etcd binary on PATH, or None."""
    return shutil.which("etcd")


@dataclass(frozen=True)
class ClientTLSFiles:
    """Serve the client port over TLS with these PEM files; ``ca`` set = require client certificates.

    ``client_cert``/``client_key`` (signed by ``ca``) are what the harness itself uses for health checks.
    """

    cert: Path
    key: Path
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass
class EtcdMember:
    """One member: its ports, data directory, log, and process (None when not running)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    scheme: str = "http"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    frozen: bool = False

    @property
    def endpoint(self) -> str:
        """``host:port`` for gRPC clients."""
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        """The process exists and has not exited (a frozen member is running)."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of the member's log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on HOST (held open together so they differ; a race with other
    processes is still possible, which is why EtcdCluster.start retries with new ports)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1.

    Args:
        base_dir: where the members' data directories and logs go.
        size: the number of members (3 tolerates one failure).
        binary: the etcd executable (default: ``etcd`` on PATH).
        client_tls: serve the client port over TLS.
        extra_args: more etcd flags for every member (e.g. ``--auth-token-ttl``).
        start_timeout: how long start/restart wait for health, in seconds.
    """

    def __init__(self, base_dir: Path, size: int = 3, *, binary: str | None = None,
                 client_tls: ClientTLSFiles | None = None, extra_args: Sequence[str] = (),
                 start_timeout: float = 30.0) -> None:
        found = binary or find_etcd()
        if found is None:
            raise FileNotFoundError("etcd not found on PATH (Debian: apt-get install etcd-server)")
        self.binary = found
        self.base_dir = base_dir
        self.size = size
        self.client_tls = client_tls
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.token = f"sessiond-test-{uuid.uuid4().hex[:12]}"
        self.members: list[EtcdMember] = []

    # ------------------------------------------------------------------ addresses

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member, in member order."""
        return [m.endpoint for m in self.members]

    def member(self, endpoint_or_name: str) -> EtcdMember:
        """The member with this endpoint or name."""
        for m in self.members:
            if endpoint_or_name in (m.endpoint, m.name):
                return m
        raise KeyError(endpoint_or_name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EtcdCluster:
        """Start every member as a new cluster and wait until all are healthy (retrying with new
        ports if one could not bind)."""
        last: EtcdStartError | None = None
        for _attempt in range(3):
            self._layout()
            for member in self.members:
                self._spawn(member, "new")
            try:
                self.wait_healthy_blocking(timeout=self.start_timeout)
                return self
            except EtcdStartError as exc:
                last = exc
                self.stop()
                if not any(("address already in use" in m.log_tail(50)) for m in self.members):
                    break
        assert last is not None
        raise last

    def _layout(self) -> None:
        ports = _free_ports(2 * self.size)
        scheme = "https" if self.client_tls else "http"
        self.token = f"sessiond-test-{uuid.uuid4().hex[:12]}"
        self.members = []
        for i in range(self.size):
            name = f"m{i + 1}"
            data_dir = self.base_dir / name
            shutil.rmtree(data_dir, ignore_errors=True)
            self.members.append(EtcdMember(name, ports[2 * i], ports[2 * i + 1], data_dir,
                                           self.base_dir / f"{name}.log", scheme))

    def _spawn(self, member: EtcdMember, state: str) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            self.binary, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]
        if self.client_tls is not None:
            args += ["--cert-file", str(self.client_tls.cert), "--key-file", str(self.client_tls.key)]
            if self.client_tls.ca is not None:
                args += ["--client-cert-auth", "--trusted-ca-file", str(self.client_tls.ca)]
        args += self.extra_args
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                              start_new_session=True)
        member.frozen = False

    def stop(self, grace: float = 1.0) -> None:
        """Stop every member (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it. Safe to call twice.

        The members' data is disposable, so the grace is short: a cluster stopping as a whole spends
        seconds transferring leadership between members that are all going away.
        """
        for member in self.members:
            if member.running:
                assert member.process is not None
                if member.frozen:
                    member.process.send_signal(signal.SIGCONT)
                member.process.terminate()
        deadline = time.monotonic() + grace
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait()
                member.frozen = False

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults

    def kill(self, member: EtcdMember) -> None:
        """``kill -9`` the member and reap it."""
        assert member.process is not None and member.running, f"{member.name} is not running"
        member.process.kill()
        member.process.wait()
        member.frozen = False

    def freeze(self, member: EtcdMember) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a hung or partitioned member)."""
        assert member.process is not None and member.running
        member.process.send_signal(signal.SIGSTOP)
        member.frozen = True

    def thaw(self, member: EtcdMember) -> None:
        """SIGCONT after :meth:`freeze`."""
        assert member.process is not None and member.running
        member.process.send_signal(signal.SIGCONT)
        member.frozen = False

    def restart(self, member: EtcdMember) -> None:
        """Start a stopped or killed member again: same name, ports and data directory."""
        assert not member.running, f"{member.name} is still running"
        self._spawn(member, "existing")

    # ------------------------------------------------------------------ health

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.client_tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.client_tls.ca) if self.client_tls.ca else None)
        if self.client_tls.ca is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_tls.client_cert is not None and self.client_tls.client_key is not None:
            context.load_cert_chain(str(self.client_tls.client_cert), str(self.client_tls.client_key))
        return context

    def is_healthy(self, member: EtcdMember, timeout: float = 1.0) -> bool:
        """etcd's own ``/health``: the member runs, has a leader and answers a quorum read."""
        if not member.running or member.frozen:
            return False
        try:
            with urllib.request.urlopen(f"{member.client_url}/health", timeout=timeout,
                                        context=self._ssl_context()) as reply:
                return bool(json.loads(reply.read()).get("health") in ("true", True))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _unhealthy(self, members: Sequence[EtcdMember]) -> list[EtcdMember]:
        down = [m for m in members if not m.running]
        if down:
            details = "\n".join(f"--- {m.name} ({m.log_path}):\n{m.log_tail()}" for m in down)
            raise EtcdStartError(f"etcd member(s) exited: {', '.join(m.name for m in down)}\n{details}")
        return [m for m in members if not self.is_healthy(m)]

    def wait_healthy_blocking(self, members: Sequence[EtcdMember] | None = None, timeout: float = 30.0) -> None:
        """Poll until every given member (default: all) is healthy; raise EtcdStartError after ``timeout``."""
        deadline = time.monotonic() + timeout
        waiting = list(self.members if members is None else members)
        while waiting := self._unhealthy(waiting):
            if time.monotonic() >= deadline:
                raise EtcdStartError(f"etcd not healthy within {timeout} s: {', '.join(m.name for m in waiting)}\n"
                                     + "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in waiting))
            time.sleep(0.05)

    async def wait_healthy(self, members: Sequence[EtcdMember] | None = None, timeout: float = 30.0) -> None:
        """:meth:`wait_healthy_blocking` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = list(self.members if members is None else members)
        while True:
            waiting = await asyncio.to_thread(self._unhealthy, waiting)
            if not waiting:
                return
            if loop.time() >= deadline:
                raise EtcdStartError(f"etcd not healthy within {timeout} s: {', '.join(m.name for m in waiting)}")
            await asyncio.sleep(0.05)

    def metric(self, name: str, **labels: str) -> float:
        """A Prometheus counter or gauge summed over the running members (etcd's ``/metrics``), e.g.
        ``metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")``: streams opened so far."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for member in self.members:
            if not member.running or member.frozen:
                continue
            with urllib.request.urlopen(f"{member.client_url}/metrics", timeout=2.0,
                                        context=self._ssl_context()) as reply:
                for line in reply.read().decode().splitlines():
                    series, _, value = line.rpartition(" ")
                    if series.startswith(name + "{") and all(label in series for label in wanted):
                        total += float(value)
        return total

    async def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The member that leads, as the running members' Status calls agree (waits for an election)."""
        from sessiond.store.etcd import EtcdClient, EtcdError, EtcdTLS

        tls = None
        if self.client_tls is not None and self.client_tls.ca is not None:
            tls = EtcdTLS(self.client_tls.ca.read_bytes(),
                          self.client_tls.client_cert.read_bytes() if self.client_tls.client_cert else None,
                          self.client_tls.client_key.read_bytes() if self.client_tls.client_key else None)
        client = EtcdClient(self.endpoints, tls=tls)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                ids: dict[int, EtcdMember] = {}
                leaders: set[int] = set()
                for member in self.members:
                    if not member.running or member.frozen:
                        continue
                    with contextlib.suppress(EtcdError):
                        status = await client.status(member.endpoint, timeout=0.5)
                        ids[status.header.member_id] = member
                        leaders.add(status.leader)
                if len(leaders) == 1 and (lead := next(iter(leaders))) in ids:
                    return ids[lead]
                if loop.time() >= deadline:
                    raise EtcdStartError(f"no agreed etcd leader within {timeout} s")
                await asyncio.sleep(0.05)
        finally:
            await client.close()
