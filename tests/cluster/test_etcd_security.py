"""The client's etcd TLS and user/password options against real members: mutual TLS, and etcd's own
authentication with a role limited to sessiond's key prefix."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond.store.etcd import EtcdAuth, EtcdAuthError, EtcdClient, EtcdTLS, EtcdUnavailableError
from sessiond.store.etcd.ops import created_at, prefix_end, put_op
from sessiond.testing.etcd_cluster import ClientTLSFiles, EtcdCluster
from tests.support.pki import make_pki

pytestmark = pytest.mark.asyncio

PREFIX = b"/sessiond/test/"


async def test_mutual_tls_to_etcd(make_cluster: Callable[..., EtcdCluster], tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    files = ClientTLSFiles(cert=pki / "server.pem", key=pki / "server.key", ca=pki / "ca.pem",
                           client_cert=pki / "client.pem", client_key=pki / "client.key")
    cluster = make_cluster(1, client_tls=files)
    ca, cert, key = ((pki / n).read_bytes() for n in ("ca.pem", "client.pem", "client.key"))

    async with await EtcdClient.connect(cluster.endpoints, tls=EtcdTLS(ca, cert, key)) as client:
        put = await client.put(PREFIX + b"k", b"v")
        assert (await client.get(PREFIX + b"k")).value == b"v"  # type: ignore[union-attr]
        watch = await client.watch(PREFIX + b"k", start_revision=put.header.revision)
        assert (await asyncio.wait_for(watch.__anext__(), 10)).revision == put.header.revision
        lease = await client.grant_lease(2)
        assert (await client.lease_time_to_live(lease.id)).ttl > 0

    # No client certificate, a wrong CA, or plaintext: the member is never reachable.
    with pytest.raises(EtcdUnavailableError):
        await EtcdClient.connect(cluster.endpoints, tls=EtcdTLS(ca), timeout=1)
    with pytest.raises(EtcdUnavailableError):
        await EtcdClient.connect(cluster.endpoints, tls=EtcdTLS(cert, cert, key), timeout=1)
    with pytest.raises(EtcdUnavailableError):
        await EtcdClient.connect(cluster.endpoints, timeout=1)


def _etcdctl(cluster: EtcdCluster, *args: str) -> None:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        pytest.fail("etcdctl is missing: run `make deps-etcd` (Debian: apt-get install etcd-client)", pytrace=False)
    subprocess.run([etcdctl, "--endpoints", cluster.members[0].client_url, *args], check=True, capture_output=True,
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=30)


@pytest.fixture
def auth_cluster(make_cluster: Callable[..., EtcdCluster]) -> EtcdCluster:
    """One member with auth enabled: root, and user ``sessiond`` allowed only under /sessiond/.
    Tokens live 1 s, so a test can see one expire."""
    cluster = make_cluster(1, extra_args=["--auth-token-ttl", "1"])
    _etcdctl(cluster, "user", "add", "root:rootpw")
    _etcdctl(cluster, "user", "add", "sessiond:s3cret")
    _etcdctl(cluster, "role", "add", "sessiond")
    _etcdctl(cluster, "role", "grant-permission", "sessiond", "--prefix=true", "readwrite", "/sessiond/")
    _etcdctl(cluster, "user", "grant-role", "sessiond", "sessiond")
    _etcdctl(cluster, "auth", "enable")
    return cluster


async def test_user_and_password_with_a_role_limited_to_the_prefix(auth_cluster: EtcdCluster) -> None:
    auth = EtcdAuth("sessiond", "s3cret")
    assert "s3cret" not in repr(auth)
    async with await EtcdClient.connect(auth_cluster.endpoints, auth=auth) as client:
        reply = await client.txn([created_at(PREFIX + b"k", 0)], [put_op(PREFIX + b"k", b"v")])
        assert reply.succeeded
        lease = await client.grant_lease(2)
        await client.put(PREFIX + b"leased", b"v", lease=lease.id)
        watch = await client.watch(PREFIX, prefix_end(PREFIX), start_revision=reply.header.revision)
        first = await asyncio.wait_for(watch.__anext__(), 10)
        assert first.events[0].kv.mod_revision == reply.header.revision
        with pytest.raises(EtcdAuthError):
            await client.put(b"/elsewhere", b"v")  # outside the role's prefix

        # Tokens live 1 s here. Let one lapse (the renewals do not use it), then call: the client
        # logs in again and the call goes through.
        await asyncio.sleep(2.5)
        assert (await client.txn([created_at(PREFIX + b"k2", 0)], [put_op(PREFIX + b"k2", b"v")])).succeeded
        assert lease.renewals >= 2 and not lease.lost


async def test_a_wrong_password_or_no_user_is_refused(auth_cluster: EtcdCluster) -> None:
    with pytest.raises(EtcdAuthError, match="sessiond"):
        await EtcdClient.connect(auth_cluster.endpoints, auth=EtcdAuth("sessiond", "wrong"), timeout=5)
    async with await EtcdClient.connect(auth_cluster.endpoints) as anonymous:
        with pytest.raises(EtcdAuthError):
            await anonymous.put(PREFIX + b"k", b"v")
