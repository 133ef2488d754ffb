"""The ``--store`` setting: ``memory`` (the default) or ``etcd://h1:2379,h2:2379/<cluster>``.

Parsing only; nothing here imports grpc or the etcd client, so ``--store memory`` pays nothing.

URL form::

    etcd://HOST[:PORT][,HOST[:PORT]...]/CLUSTER[?lease_ttl=SECONDS&failover_window=SECONDS]

``PORT`` defaults to 2379. ``CLUSTER`` names this service in etcd: its keys live under
``/sessiond/<CLUSTER>/``, so several sessiond services can share one etcd. ``lease_ttl`` (default 5,
at least 2: etcd's minimum) is the replica lease; ``failover_window`` (default 10) is how long a dead
replica's workers have to reconnect elsewhere before their sessions fail (distributed.md §3.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl

from sessiond.hostport import join_host_port, parse_host_port

__all__ = ["DEFAULT_ETCD_PORT", "EtcdStoreSpec", "MemoryStoreSpec", "StoreSpec", "parse_store"]

DEFAULT_ETCD_PORT = 2379
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class MemoryStoreSpec:
    """One process, sessions in memory (the default)."""

    def __str__(self) -> str:
        return "memory"


@dataclass(frozen=True)
class EtcdStoreSpec:
    """Replicas of one service sharing an etcd cluster."""

    endpoints: tuple[str, ...]
    cluster: str
    lease_ttl: int = 5
    failover_window: timedelta = timedelta(seconds=10)

    @property
    def key_prefix(self) -> bytes:
        """Every key of this service starts with it."""
        return f"/sessiond/{self.cluster}/".encode()

    def __str__(self) -> str:
        return f"etcd://{','.join(self.endpoints)}/{self.cluster}"


StoreSpec = MemoryStoreSpec | EtcdStoreSpec


def _seconds(name: str, raw: str) -> float:
    text = raw[:-1] if raw.endswith("s") else raw
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"store: {name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"store: {name} must be positive, got {raw!r}")
    return value


def parse_store(raw: str) -> StoreSpec:
    """Parse a ``--store`` value; raises ValueError with a one-line message naming what is wrong."""
    text = raw.strip()
    if text == "memory":
        return MemoryStoreSpec()
    if not text.startswith("etcd://"):
        raise ValueError(f"store: expected 'memory' or 'etcd://host:port,.../<cluster>', got {raw!r}")
    rest = text[len("etcd://"):]
    location, _, query = rest.partition("?")
    hosts, slash, cluster = location.partition("/")
    if not slash or not cluster:
        raise ValueError("store: the etcd URL needs a cluster name: etcd://host:port,.../<cluster>")
    if not _CLUSTER.fullmatch(cluster):
        raise ValueError(f"store: bad cluster name {cluster!r} (letters, digits, '.', '_', '-'; at most 63)")
    if not hosts:
        raise ValueError("store: the etcd URL needs at least one host: etcd://host:port,.../<cluster>")
    endpoints: list[str] = []
    for item in hosts.split(","):
        host, port = parse_host_port(item, "store: etcd endpoint", default_port=DEFAULT_ETCD_PORT)
        endpoint = join_host_port(host, port)
        if endpoint in endpoints:
            raise ValueError(f"store: etcd endpoint {endpoint} is listed twice")
        endpoints.append(endpoint)
    spec = EtcdStoreSpec(tuple(endpoints), cluster)
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"store: bad settings {query!r} (expected name=value&name=value)") from None
    for name, value in pairs:
        if name in params:
            raise ValueError(f"store: {name} is given twice")
        params[name] = value
    unknown = sorted(set(params) - {"lease_ttl", "failover_window"})
    if unknown:
        raise ValueError(f"store: unknown setting(s) {', '.join(unknown)} (known: lease_ttl, failover_window)")
    lease_ttl, window = spec.lease_ttl, spec.failover_window
    if "lease_ttl" in params:
        ttl = _seconds("lease_ttl", params["lease_ttl"])
        if ttl != int(ttl) or ttl < 2:
            raise ValueError(f"store: lease_ttl must be a whole number of seconds >= 2 (etcd's minimum), "
                             f"got {params['lease_ttl']!r}")
        lease_ttl = int(ttl)
    if "failover_window" in params:
        window = timedelta(seconds=_seconds("failover_window", params["failover_window"]))
    return EtcdStoreSpec(spec.endpoints, cluster, lease_ttl, window)
