"""``python -m tests.cluster.crashing_replica serve ...``: ``sessiond serve`` whose janitor raises
an unexpected error (a bug, not an etcd error) on its first pass — the fault of the supervision
test, injected in a real replica process."""

from __future__ import annotations

from typing import NoReturn

from sessiond.cli import main
from sessiond.store.etcd.store import EtcdStore


async def _bug(self: EtcdStore, gone_for: float) -> NoReturn:
    raise RuntimeError("injected: the janitor's pass hit a bug")


EtcdStore.orphaned_workers = _bug  # type: ignore[method-assign]

raise SystemExit(main())
