"""The ``--store`` URL and the replica settings that go with it: what is accepted, and the one-line
error for everything else. Pure parsing: nothing connects to anything."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sessiond.config import ServerConfig, config_from_env
from sessiond.store.spec import EtcdStoreSpec, MemoryStoreSpec, parse_store


@pytest.mark.parametrize(("raw", "endpoints", "cluster", "ttl", "window"), [
    ("etcd://h1:2379,h2:2379,h3:2379/prod", ("h1:2379", "h2:2379", "h3:2379"), "prod", 5, 10.0),
    ("etcd://etcd.internal/prod-eu_1.a", ("etcd.internal:2379",), "prod-eu_1.a", 5, 10.0),
    ("etcd://[::1]:23790,10.0.0.1/c?lease_ttl=2", ("[::1]:23790", "10.0.0.1:2379"), "c", 2, 10.0),
    ("etcd://h1:2379, [fe80::1]/c", ("h1:2379", "[fe80::1]:2379"), "c", 5, 10.0),
    ("etcd://h/c?failover_window=2.5s&lease_ttl=7s", ("h:2379",), "c", 7, 2.5),
])
def test_etcd_urls_that_parse(raw: str, endpoints: tuple[str, ...], cluster: str, ttl: int, window: float) -> None:
    spec = parse_store(raw)
    assert spec == EtcdStoreSpec(endpoints, cluster, ttl, timedelta(seconds=window))
    assert isinstance(spec, EtcdStoreSpec) and spec.key_prefix == f"/sessiond/{cluster}/".encode()


def test_memory_is_the_default_and_parses() -> None:
    assert parse_store("memory") == MemoryStoreSpec()
    assert ServerConfig().store_spec == MemoryStoreSpec()


@pytest.mark.parametrize(("raw", "says"), [
    ("", "expected 'memory' or 'etcd://"),
    ("redis://h/c", "expected 'memory' or 'etcd://"),
    ("etcd://h1:2379", "needs a cluster name"),
    ("etcd://h1:2379/", "needs a cluster name"),
    ("etcd:///c", "needs at least one host"),
    ("etcd://h/c/d", "bad cluster name"),
    ("etcd://h/" + "c" * 64, "bad cluster name"),
    ("etcd://h/c\x00", "bad cluster name"),
    ("etcd://h:0/c", "bad port"),
    ("etcd://h:65536/c", "bad port"),
    ("etcd://h:/c", "bad port"),
    ("etcd://h:x/c", "bad port"),
    ("etcd://::1/c", "IPv6 address goes in brackets"),
    ("etcd://[::1/c", "bad host"),
    ("etcd://h h/c", "bad host"),
    ("etcd://h,,k/c", "bad host"),
    ("etcd://h,h:2379/c", "listed twice"),
    ("etcd://h/c?lease_ttl=1", "lease_ttl must be a whole number of seconds >= 2"),
    ("etcd://h/c?lease_ttl=2.5", "lease_ttl must be a whole number"),
    ("etcd://h/c?failover_window=0", "failover_window must be positive"),
    ("etcd://h/c?failover_window=nan", "failover_window must be positive"),
    ("etcd://h/c?failover_window=soon", "failover_window must be a number of seconds"),
    ("etcd://h/c?lease_ttl=3&lease_ttl=4", "lease_ttl is given twice"),
    ("etcd://h/c?ttl=3", "unknown setting(s) ttl"),
    ("etcd://h/c?lease_ttl", "bad settings"),
])
def test_bad_store_values_get_one_line_naming_the_problem(raw: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_store(raw)
    message = str(caught.value)
    assert message.startswith("store") and says in message and "\n" not in message


def _config(**values: Any) -> ServerConfig:
    return ServerConfig(**values)


ETCD = "etcd://127.0.0.1:2379/test"


def test_replica_settings_are_accepted_with_an_etcd_store(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key", "password", "peer"):
        (tmp_path / name).write_text("x\n")
    config = _config(store=ETCD, advertise="10.0.0.5:50051", etcd_tls_ca=tmp_path / "ca.pem",
                     etcd_tls_cert=tmp_path / "client.pem", etcd_tls_key=tmp_path / "client.key",
                     etcd_user="sessiond", etcd_password_file=tmp_path / "password",
                     peer_token_file=tmp_path / "peer")
    assert isinstance(config.store_spec, EtcdStoreSpec)
    # TLS with client certificates and tokens between replicas: the built combination.
    secure = _config(store=ETCD, tls_cert=tmp_path / "client.pem", tls_key=tmp_path / "client.key",
                     tls_client_ca=tmp_path / "ca.pem", peer_tls_ca=tmp_path / "ca.pem",
                     peer_tls_cert=tmp_path / "client.pem", peer_tls_key=tmp_path / "client.key",
                     caller_token="c", peer_token="p")
    assert secure.peer_tls_ca == tmp_path / "ca.pem"
    # The advertise address defaults to the listen address when that one is reachable.
    assert _config(store=ETCD, listen="10.0.0.5:50051").advertise is None
    # IPv6 literals go through the one HOST:PORT parser (brackets kept off the host).
    assert _config(store=ETCD, listen="[::1]:50051").advertise is None
    assert _config(store=ETCD, listen="[fe80::1%eth0]:50051").advertise is None
    assert _config(store=ETCD, listen="[::]:0", advertise="[2001:db8::5]:50051").advertise == "[2001:db8::5]:50051"


@pytest.mark.parametrize(("values", "says"), [
    ({"etcd_user": "u", "etcd_password": "p"}, "etcd_user only applies with store etcd://"),
    ({"advertise": "h:1"}, "advertise only applies with store etcd://"),
    ({"peer_token": "t"}, "peer_token only applies with store etcd://"),
    ({"store": ETCD, "listen": "0.0.0.0:50051"}, "advertise is needed"),
    ({"store": ETCD, "listen": "127.0.0.1:0"}, "advertise is needed"),
    ({"store": ETCD, "listen": "[::]:50051"}, "advertise is needed"),
    ({"store": ETCD, "listen": "[::1]:0"}, "advertise is needed"),
    ({"store": ETCD, "listen": "unix:/run/sessiond.sock"}, "advertise is needed with store etcd:// when listen is "
                                                            "not host:port"),
    ({"store": ETCD, "listen": "::1:50051"}, "an IPv6 address goes in brackets"),
    ({"store": ETCD, "advertise": "[::]:50051"}, "not a wildcard"),
    ({"store": ETCD, "advertise": "0.0.0.0:50051"}, "not a wildcard"),
    ({"store": ETCD, "advertise": "h"}, "advertise: expected host:port"),
    ({"store": ETCD, "etcd_tls_cert": Path("c")}, "etcd_tls_cert and etcd_tls_key go together"),
    ({"store": ETCD, "etcd_tls_cert": Path("c"), "etcd_tls_key": Path("k")}, "etcd_tls_cert needs etcd_tls_ca"),
    ({"store": ETCD, "etcd_user": "u"}, "etcd_user needs etcd_password_file or etcd_password"),
    ({"store": ETCD, "etcd_password": "p"}, "an etcd password needs etcd_user"),
    ({"store": ETCD, "etcd_user": "u", "etcd_password": "p", "etcd_password_file": Path("f")}, "not both"),
    ({"store": ETCD, "etcd_user": "", "etcd_password": "p"}, "must not be empty"),
    ({"store": ETCD, "peer_token": ""}, "peer_token must be non-empty visible ASCII"),
    ({"store": ETCD, "peer_token": "a b"}, "peer_token must be non-empty visible ASCII"),
    # Every way replicas could fail to reach each other is refused at start, never at the first
    # forwarded call (review i12b, 8).
    ({"store": ETCD, "tls_cert": Path("c"), "tls_key": Path("k")}, "with tls_cert needs peer_tls_ca"),
    ({"store": ETCD, "tls_cert": Path("c"), "tls_key": Path("k"), "tls_client_ca": Path("a"),
      "peer_tls_ca": Path("a")}, "with tls_client_ca needs peer_tls_cert and peer_tls_key"),
    ({"store": ETCD, "peer_tls_ca": Path("a")}, "peer_tls_ca only applies when the replicas serve TLS"),
    ({"store": ETCD, "peer_tls_cert": Path("c")}, "peer_tls_cert and peer_tls_key go together"),
    ({"peer_tls_ca": Path("a")}, "peer_tls_ca only applies with store etcd://"),
    ({"store": ETCD, "caller_token": "c"}, "with credentials needs peer_token or peer_token_file"),
    ({"store": ETCD, "tokens_file": Path("t")}, "with credentials needs peer_token or peer_token_file"),
    ({"store": ETCD, "tls_cert": Path("c"), "tls_key": Path("k"), "tls_client_ca": Path("a"),
      "tls_client_roles": Path("r"), "peer_tls_ca": Path("a"), "peer_tls_cert": Path("c"),
      "peer_tls_key": Path("k")}, "with credentials needs peer_token or peer_token_file"),
    ({"store": ETCD, "peer_token": "t", "peer_token_file": Path("f")}, "not both"),
    ({"store": ETCD, "etcd_tls_ca": Path("/nonexistent/ca.pem")}, "etcd_tls_ca: no such file"),
    ({"store": ETCD, "peer_token_file": Path("/nonexistent/token")}, "peer_token_file: no such file"),
])
def test_replica_settings_that_do_not_fit_get_one_line(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as caught:
        _config(**values)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_store_settings_come_from_the_environment_too() -> None:
    overrides = config_from_env({"SESSIOND_STORE": ETCD, "SESSIOND_ADVERTISE": "h:1", "SESSIOND_ETCD_USER": "u",
                                 "SESSIOND_ETCD_PASSWORD": "p", "SESSIOND_PEER_TOKEN": "t"})
    config = ServerConfig().with_overrides(**overrides)
    assert (config.store, config.advertise, config.etcd_user, config.etcd_password, config.peer_token) == (
        ETCD, "h:1", "u", "p", "t")
