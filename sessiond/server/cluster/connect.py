"""Connecting a replica to its etcd cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessiond.store.etcd.errors import EtcdError

if TYPE_CHECKING:
    from sessiond.config import ServerConfig
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["open_store"]


async def open_store(config: ServerConfig, address: str) -> EtcdStore:
    """Connect to the etcd cluster of ``config.store`` with its TLS and user settings; the store is
    not started yet (that registers the replica).

    Raises:
        StartupError: a file cannot be read, or etcd cannot be reached or refuses the user.
    """
    from sessiond.server.startup import StartupError
    from sessiond.store.etcd import EtcdAuth, EtcdClient, EtcdTLS
    from sessiond.store.etcd.store import EtcdStore
    from sessiond.store.spec import EtcdStoreSpec

    spec = config.store_spec
    assert isinstance(spec, EtcdStoreSpec)
    try:
        tls = None
        if config.etcd_tls_ca is not None:
            tls = EtcdTLS(config.etcd_tls_ca.read_bytes(),
                          config.etcd_tls_cert.read_bytes() if config.etcd_tls_cert else None,
                          config.etcd_tls_key.read_bytes() if config.etcd_tls_key else None)
        auth = None
        if config.etcd_user is not None:
            password = config.etcd_password
            if config.etcd_password_file is not None:
                lines = config.etcd_password_file.read_text().splitlines()
                password = lines[0] if lines else ""
            auth = EtcdAuth(config.etcd_user, password or "")
    except OSError as error:
        raise StartupError(f"etcd settings: {error}") from None
    try:
        client = await EtcdClient.connect(spec.endpoints, tls=tls, auth=auth, timeout=5.0)
    except EtcdError as error:
        raise StartupError(f"store {spec}: {error}") from None
    return EtcdStore(client, spec.key_prefix, address, lease_ttl=spec.lease_ttl,
                     retention=config.retention.total_seconds())
