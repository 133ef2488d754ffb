"""``python -m tests.cluster.crashing_replica serve ... --crash-when PATH``: ``sessiond serve`` whose
janitor hits a bug (an unexpected error, not an etcd one) on its first pass after ``PATH`` exists —
the fault of the supervision test, injected in a real replica process."""

from __future__ import annotations

import sys
from pathlib import Path

from sessiond.cli import main
from sessiond.store.base import WorkerKey
from sessiond.store.etcd.store import EtcdStore

_at = sys.argv.index("--crash-when")
CRASH_WHEN = Path(sys.argv[_at + 1])
del sys.argv[_at:_at + 2]
_orphaned_workers = EtcdStore.orphaned_workers


async def _orphaned_or_bug(self: EtcdStore, gone_for: float) -> list[tuple[str, WorkerKey]]:
    if CRASH_WHEN.exists():  # noqa: ASYNC240 (one stat of a local file, every janitor pass)
        raise RuntimeError("injected: the janitor's pass hit a bug")
    return await _orphaned_workers(self, gone_for)


EtcdStore.orphaned_workers = _orphaned_or_bug  # type: ignore[method-assign]

raise SystemExit(main())
