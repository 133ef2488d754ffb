"""``--store`` as a user meets it: the default memory server loads nothing of etcd, and the etcd
settings are checked at start-up with one line and exit code 2, an unreachable etcd included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.integration.conftest import REPO_ROOT

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
for name in list(ENV):
    if name.startswith("SESSIOND_"):
        del ENV[name]


def _sessiond(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A free port, not the default 50051: on a shared machine another sessiond may listen there,
    # and the bind check would answer before the store settings are checked.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"SESSIOND_LISTEN": f"127.0.0.1:{port}", **(env or ENV)}
    return subprocess.run([sys.executable, "-m", "sessiond", "serve", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_memory_server_never_imports_the_etcd_store() -> None:
    # A fresh interpreter builds, starts and stops a default server (SESSIOND_STORE=memory), then
    # lists what it loaded: nothing of the etcd client, its stubs or the etcd test kit.
    script = textwrap.dedent("""
        import asyncio, sys
        from google.protobuf import descriptor_pool
        from sessiond.config import ServerConfig, config_from_env
        from sessiond.server import create_server

        async def main():
            config = ServerConfig(listen="127.0.0.1:0").with_overrides(**config_from_env())
            assert config.store == "memory", config.store
            server, _port = await create_server(config)
            await server.start()
            await server.stop(0)

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules
                        if m.startswith(("sessiond.store.etcd", "sessiond.testing")) or "etcd" in m)
        try:
            descriptor_pool.Default().FindServiceByName("etcdserverpb.KV")
            loaded.append("etcdserverpb descriptors")
        except KeyError:
            pass
        print(loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**ENV, "SESSIOND_STORE": "memory"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("args", "says"), [
    (["--store", "etcd://127.0.0.1:9/test"], "sessiond: store etcd://127.0.0.1:9/test: etcd: "),
    (["--store", "etcd://127.0.0.1:2379"], "sessiond: store: the etcd URL needs a cluster name"),
    (["--store", "zookeeper://h/c"], "sessiond: store: expected 'memory' or 'etcd://"),
    (["--etcd-user", "u"], "sessiond: etcd_user only applies with store etcd://"),
    (["--store", "etcd://h/c", "--etcd-user", "u"], "sessiond: etcd_user needs etcd_password_file or etcd_password"),
    (["--store", "etcd://h/c", "--etcd-tls-ca", "/nonexistent.pem"], "sessiond: etcd_tls_ca: no such file"),
])
def test_store_settings_are_checked_at_start_with_one_line_and_exit_code_2(args: list[str], says: str) -> None:
    done = _sessiond(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(says) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_the_store_can_come_from_the_environment() -> None:
    done = _sessiond(env={**ENV, "SESSIOND_STORE": "etcd://h1,h2/prod"})
    assert done.returncode == 2
    # The setting was taken (and parsed: default ports added); these hosts do not exist.
    assert done.stderr.startswith("sessiond: store etcd://h1:2379,h2:2379/prod: etcd: "), done.stderr
    assert done.stderr.count("\n") == 1
