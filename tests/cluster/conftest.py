"""Fixtures of the cluster tier: real etcd members on 127.0.0.1 and free ports.

* ``etcd_cluster`` — one 3-member cluster per test module, healthy before the first test. Tests that
  share it never kill, freeze or reconfigure a member, and each writes only under its own ``prefix``.
* ``make_cluster`` — a fresh cluster of its own for a test that injects faults (kill -9, SIGSTOP,
  restart); stopped and reaped after the test.
* ``etcd`` — an :class:`EtcdClient` over every member of ``etcd_cluster``, on the test's loop.

etcd comes from ``make deps-etcd`` (Debian's etcd-server). Without it the tier is skipped with one
line saying what to install — except under ``CI=true``, where a missing etcd fails every test here.
Everything waits by polling with a deadline (:func:`eventually`, the integration tier's).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from sessiond.store.etcd import EtcdClient
from sessiond.testing.etcd_cluster import EtcdCluster, find_etcd
from tests.integration.conftest import eventually

__all__ = ["eventually"]

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

INSTALL_HINT = ("etcd >= 3.4 is needed on PATH: run `make deps-etcd` (as root) "
                "or apt-get install etcd-server etcd-client")


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """The etcd executable; a failure under CI=true, a skip elsewhere, when it is missing."""
    found = find_etcd()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {INSTALL_HINT}", pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


@pytest.fixture(scope="module")
def etcd_cluster(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A healthy 3-member cluster shared by the tests of one module (no faults on it)."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), 3, binary=etcd_binary) as cluster:
        yield cluster


@pytest.fixture
def make_cluster(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., EtcdCluster]]:
    """Start fresh clusters for one test (``make_cluster(size=3, **EtcdCluster kwargs)``); all are stopped after it."""
    started: list[EtcdCluster] = []

    def make(size: int = 3, **kwargs: Any) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size, binary=etcd_binary, **kwargs)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


@pytest_asyncio.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[EtcdClient]:
    """A client of the shared cluster, over all its members."""
    client = await EtcdClient.connect(etcd_cluster.endpoints)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test uses."""
    return f"/test/{uuid.uuid4().hex}/".encode()
