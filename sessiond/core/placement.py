"""Placement: which worker a new session goes to, and which waiting request goes next.

**Candidates.** Only live (connected, not suspect), non-draining, not backlogged workers of the task queue whose
labels match the request's selector and whose free capacity covers every requested amount.

**Most free.** Among the candidates, the one that keeps the largest share of what the request
asks for free: the lowest *dominant share* after placement (DRF, Ghodsi et al. 2011), taken over
the resources the request names besides ``sessions`` — ``max(r: (used[r] + asked[r]) /
capacity[r])``. Ties — and every request that asks for nothing but a session — go to the most
free ``sessions``, then to the worker that has waited longest for work. A sessions-only request
therefore sees exactly the old rule: the most free slots.

**No linear scan.** Workers are indexed by (task queue, label set): a selector is matched against
the label sets of the queue (cached per selector), never against workers. Inside a label set,
workers are partitioned by their capacity and free amounts of resources other than ``sessions``
(a 2-GPU worker is in one of three partitions: 0, 1 or 2 GPUs free), and each partition keeps a
max-heap by free ``sessions``. A placement peeks one heap per partition of each matching label
set: its cost grows with label sets and distinct free amounts, not with workers or sessions.
Heap entries carry the worker's ``version``; any change bumps it and pushes a fresh entry, so
stale entries are skipped lazily.

**Fairness among waiting Creates** (per task queue). Waiting Creates that ask for the same thing
(same resources, same selector) form one FIFO; only its oldest (the *head*) competes. Whenever
capacity may have appeared, heads are served oldest first, each to its most free candidate; a
head that fits nowhere keeps its place and later requests may pass it. A later request (a head
or a new Create) that takes what an earlier head needs — it is placed on a worker the head could
use (labels match, capacity covers it) and leaves less there than the head asks for in some
resource it took — *skips* that head. After :data:`MAX_SKIPS` skips the head *holds*: no later
request is placed where it would skip the held head again, so the workers it could use fill
no further until it fits; requests that do not compete with it still pass. So a large request is
passed at most MAX_SKIPS times (and smaller ones are held back only until it fits), and a request
no connected worker could ever hold is never skipped and holds nothing: it waits for a worker
that can hold it to join (and operator views say why it waits). Recreates go only to their
worker: they wait FIFO per worker (a request that worker could never hold does not block the
ones behind it) and come first there.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from sessiond.core.model import Waiter, WaitingKind, Worker
from sessiond.core.resources import SESSIONS, ResourceVector
from sessiond.core.selector import Labels, Selector, labels_key
from sessiond.core.waiters import WaiterQueues

_ONE_SESSION = ResourceVector.one_session()
#: How often a waiting Create may be skipped while it is the oldest of its kind before it holds.
MAX_SKIPS = 8
# Matched label sets cached per task queue and selector; selectors come from callers.
_MATCH_CACHE = 256

# A decision of the policy: place the waiter on the worker, or (worker None) fail it: its time is up.
Decision = tuple[Waiter, Worker | None]
# (capacity, free) of the resources other than sessions, as sorted items: a partition's key.
_PartKey = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]
_NO_EXTRA: _PartKey = ((), ())


def compatible(worker: Worker, demand: ResourceVector, selector: Selector) -> bool:
    """True when the worker could ever hold ``demand``: its labels match and its capacity covers it."""
    return selector.matches(worker.labels) and worker.capacity.covers(demand)


def takes_from(taken: ResourceVector, worker: Worker, demand: ResourceVector) -> bool:
    """True when placing ``taken`` on ``worker`` leaves less free there than ``demand`` needs in a
    resource ``taken`` uses: the placement competes with a request for ``demand``."""
    free = worker.free
    for name, need in demand.items():
        amount = taken[name]
        if amount and free[name] - amount < need:
            return True
    return False


@dataclass(eq=False, slots=True)
class _Partition:
    """Eligible workers of one label set with the same capacity and free amounts besides sessions."""

    key: _PartKey
    extra_capacity: ResourceVector
    extra_free: ResourceVector
    # (-free sessions, seq, version, worker); a worker's newest entry is the valid one.
    heap: list[tuple[int, int, int, Worker]] = field(default_factory=list)
    members: int = 0


@dataclass(eq=False, slots=True)
class LabelGroup:
    """The workers of one task queue that carry one label set."""

    task_queue: str
    labels: dict[str, str]
    partitions: dict[_PartKey, _Partition] = field(default_factory=dict)
    # Capacity vectors of the connected, non-draining workers: what the group could ever hold.
    capacities: dict[ResourceVector, int] = field(default_factory=dict)
    members: int = 0


class CandidateIndex:
    """Workers by (task queue, label set) and, within, heaps of the ones that may take a session."""

    __slots__ = ("_by_queue", "_counted", "_extras", "_group_of", "_groups", "_matches", "_seq", "_slot")

    def __init__(self) -> None:
        self._groups: dict[tuple[str, Labels], LabelGroup] = {}
        self._by_queue: dict[str, list[LabelGroup]] = {}
        self._matches: dict[str, dict[Selector, tuple[LabelGroup, ...]]] = {}
        self._group_of: dict[Worker, LabelGroup] = {}
        self._slot: dict[Worker, _Partition] = {}
        self._counted: set[Worker] = set()
        self._seq = itertools.count()
        # Capacity vector -> (its non-session amounts, their names), both sorted: a partition key's parts.
        self._extras: dict[ResourceVector, tuple[tuple[tuple[str, int], ...], tuple[str, ...]]] = {}

    # ------------------------------------------------------------- membership

    def add(self, worker: Worker) -> None:
        """Index a newly connected worker (then :meth:`touch` it)."""
        key = (worker.key.task_queue, labels_key(worker.labels))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = LabelGroup(worker.key.task_queue, dict(worker.labels))
            self._by_queue.setdefault(group.task_queue, []).append(group)
            self._matches.pop(group.task_queue, None)
        group.members += 1
        self._group_of[worker] = group

    def remove(self, worker: Worker) -> None:
        """Forget a disconnected worker (already touched as not connected)."""
        group = self._group_of.pop(worker, None)
        if group is None:
            return
        group.members -= 1
        if group.members == 0:
            del self._groups[(group.task_queue, labels_key(group.labels))]
            queue = self._by_queue[group.task_queue]
            queue.remove(group)
            if not queue:
                del self._by_queue[group.task_queue]
            self._matches.pop(group.task_queue, None)

    def touch(self, worker: Worker) -> None:
        """Record that the worker's free capacity or eligibility changed."""
        worker.version += 1
        group = self._group_of.get(worker)
        if group is None:
            return
        counted = worker.connected and not worker.draining
        if counted != (worker in self._counted):
            caps = group.capacities
            if counted:
                self._counted.add(worker)
                caps[worker.capacity] = caps.get(worker.capacity, 0) + 1
            else:
                self._counted.discard(worker)
                caps[worker.capacity] -= 1
                if not caps[worker.capacity]:
                    del caps[worker.capacity]
        partition: _Partition | None = None
        free_sessions = 0
        if worker.eligible:
            free = worker.free
            free_sessions = free[SESSIONS]
            if free_sessions > 0:
                key = _NO_EXTRA if len(worker.capacity) <= 1 else self._part_key(worker.capacity, free)
                partition = group.partitions.get(key)
                if partition is None:
                    partition = group.partitions[key] = _Partition(
                        key, ResourceVector(dict(key[0])), ResourceVector(dict(key[1])))
        old = self._slot.get(worker)
        if old is not partition:
            if old is not None:
                old.members -= 1
                if not old.members:
                    del group.partitions[old.key]
            if partition is None:
                del self._slot[worker]
            else:
                partition.members += 1
                self._slot[worker] = partition
        if partition is not None:
            heap = partition.heap
            heapq.heappush(heap, (-free_sessions, next(self._seq), worker.version, worker))
            if len(heap) > 4 * partition.members + 64:
                partition.heap = [e for e in heap if e[2] == e[3].version]
                heapq.heapify(partition.heap)

    def _part_key(self, capacity: ResourceVector, free: ResourceVector) -> _PartKey:
        extras = self._extras.get(capacity)
        if extras is None:
            if len(self._extras) > 4096:  # capacities come from workers: keep the cache bounded
                self._extras.clear()
            amounts = tuple(sorted((k, v) for k, v in capacity.items() if k != SESSIONS))
            extras = self._extras[capacity] = (amounts, tuple(k for k, _ in amounts))
        return extras[0], tuple((name, free[name]) for name in extras[1])

    # ------------------------------------------------------------- queries

    def matching(self, task_queue: str, selector: Selector) -> tuple[LabelGroup, ...] | list[LabelGroup]:
        """The label sets of ``task_queue`` that ``selector`` matches (cached until the queue's
        label sets change)."""
        groups = self._by_queue.get(task_queue)
        if not groups:
            return ()
        if not selector:
            return groups
        cache = self._matches.get(task_queue)
        if cache is None:
            cache = self._matches[task_queue] = {}
        found = cache.get(selector)
        if found is None:
            if len(cache) >= _MATCH_CACHE:
                cache.clear()
            found = cache[selector] = tuple(g for g in groups if selector.matches(g.labels))
        return found

    def best(self, task_queue: str, demand: ResourceVector, selector: Selector,
             held_back: _HeldBack | None = None) -> Worker | None:
        """The most free eligible worker of ``task_queue`` matching ``selector`` with ``demand`` free,
        skipping workers ``held_back`` refuses (see the module docstring for "most free")."""
        extra = [(name, amount) for name, amount in demand.items() if name != SESSIONS]
        sessions = demand[SESSIONS]
        best: Worker | None = None
        best_rank: tuple[float, int, int] | None = None
        for group in self.matching(task_queue, selector):
            for partition in group.partitions.values():
                free = partition.extra_free
                if extra and not all(free[name] >= amount for name, amount in extra):
                    continue
                heap = partition.heap
                while heap and heap[0][2] != heap[0][3].version:
                    heapq.heappop(heap)  # stale: the worker's newer entry is further down
                if not heap:
                    continue
                minus_free, seq, _, worker = heap[0]
                if -minus_free < sessions or not worker.eligible:
                    continue
                if held_back is not None and held_back(worker, demand):
                    # Every worker of the partition is refused too: the same extra amounts free,
                    # and no more free sessions than the top one.
                    continue
                share = 0.0
                if extra:
                    capacity = partition.extra_capacity
                    share = max((capacity[name] - free[name] + amount) / capacity[name] for name, amount in extra)
                rank = (share, minus_free, seq)
                if best_rank is None or rank < best_rank:
                    best, best_rank = worker, rank
        return best

    def why_unplaceable(self, task_queue: str, demand: ResourceVector, selector: Selector) -> str | None:
        """Why no connected, non-draining worker of ``task_queue`` could ever hold ``demand`` with
        ``selector`` (a sentence), or None when one could (once enough of it is free). Operator path:
        looks at the distinct capacities of the matching label sets, not at workers."""
        groups = self.matching(task_queue, selector)
        if not self._by_queue.get(task_queue):
            return f"no worker of task queue {task_queue!r} is connected"
        if not groups:
            return f"no connected worker of task queue {task_queue!r} matches the selector {str(selector)!r}"
        largest: dict[str, int] = {}
        any_capacity = False
        for group in groups:
            for capacity in group.capacities:
                any_capacity = True
                if capacity.covers(demand):
                    return None
                for name, _ in demand.items():
                    largest[name] = max(largest.get(name, 0), capacity[name])
        if not any_capacity:
            return "every connected worker that matches is draining"
        short = [f"{name}={amount} (largest: {largest.get(name, 0)})" for name, amount in sorted(demand.items())
                 if largest.get(name, 0) < amount]
        where = "matching the selector " + repr(str(selector)) if selector else f"of task queue {task_queue!r}"
        if short:
            return f"no connected worker {where} has the capacity for " + ", ".join(short)
        return f"no single connected worker {where} has the capacity for all of {demand}"


class _HeldBack:
    """Refuses a worker for a request of ``seq`` when that would skip an older holding head."""

    __slots__ = ("holders", "seq")

    def __init__(self, holders: list[Waiter], seq: int) -> None:
        self.holders = holders
        self.seq = seq

    def __call__(self, worker: Worker, demand: ResourceVector) -> bool:
        for holder in self.holders:
            if holder.seq >= self.seq:
                break  # oldest first: the rest are younger
            if compatible(worker, holder.demand, holder.selector) and takes_from(demand, worker, holder.demand):
                return True
        return False


class Placer:
    """The policy over the index and the waiter queues: where a request goes, who goes next."""

    __slots__ = ("index", "max_skips", "waiting")

    def __init__(self, index: CandidateIndex, waiting: WaiterQueues, *, max_skips: int = MAX_SKIPS) -> None:
        if max_skips < 1:
            raise ValueError(f"max_skips must be at least 1, got {max_skips}")
        self.index = index
        self.waiting = waiting
        self.max_skips = max_skips

    def choose(self, task_queue: str, demand: ResourceVector, selector: Selector, seq: int) -> Worker | None:
        """Where a Create that arrived as ``seq`` goes now, or None (it must wait)."""
        holders = self.waiting.holders(task_queue)
        held_back = _HeldBack(holders, seq) if holders else None
        return self.index.best(task_queue, demand, selector, held_back)

    def placing(self, task_queue: str, seq: int, worker: Worker, demand: ResourceVector) -> None:
        """A Create that arrived as ``seq`` is about to take ``demand`` on ``worker``: count it as a
        skip of every older waiting head it competes with (call before the worker's usage changes)."""
        if not self.waiting.has_any(task_queue):
            return
        for head in self.waiting.heads(task_queue):
            if head.seq >= seq or head.holding:
                continue
            if compatible(worker, head.demand, head.selector) and takes_from(demand, worker, head.demand):
                head.skipped += 1
                if head.skipped >= self.max_skips:
                    self.waiting.hold(head)

    def next_creates(self, now: float, task_queue: str, changed: Worker | None) -> Iterator[Decision]:
        """The waiting Creates of ``task_queue`` to place now, oldest head first, as (waiter, worker)
        pairs; (waiter, None) means its creation_timeout has passed: fail it. The caller applies each
        pair before asking for the next (state is re-read after every yield).

        With ``changed``, only that worker gained room or became eligible, so only heads it could
        hold are looked at (nothing else can fit now that did not before); None looks at every head
        (a holder left, so workers it held back may take others).
        """
        if not self.waiting.has_any(task_queue):
            return
        order: list[tuple[int, Waiter]] = []
        for head in self.waiting.heads(task_queue):
            if changed is None or head.deadline <= now or compatible(changed, head.demand, head.selector):
                order.append((head.seq, head))
        heapq.heapify(order)
        while order:
            _, head = heapq.heappop(order)
            if head.done:
                continue
            if head.deadline <= now:
                yield head, None
            else:
                if changed is not None and not (changed.eligible and changed.free.covers(head.demand)):
                    continue  # it fits nowhere else either, or it would have been placed before
                worker = self.choose(task_queue, head.demand, head.selector, head.seq)
                if worker is None:
                    continue
                yield head, worker
            following = self.waiting.head_of(head)
            if following is not None and (changed is None or compatible(changed, following.demand,
                                                                       following.selector)):
                heapq.heappush(order, (following.seq, following))

    def no_room(self, task_queue: str, demand: ResourceVector, selector: Selector, verb: str, when: str = "") -> str:
        """Why a Create finds no worker: the plain sentence for a plain request, else with the reason."""
        if demand == _ONE_SESSION and not selector:
            return f"no worker of task queue {task_queue!r} {verb} a free slot{when}"
        matching = f" matching {str(selector)!r}" if selector else ""
        text = f"no worker of task queue {task_queue!r}{matching} {verb} {demand} free{when}"
        reason = self.index.why_unplaceable(task_queue, demand, selector)
        return text if reason is None else f"{text}: {reason}"

    def waiting_kinds(self, task_queue: str = "") -> list[WaitingKind]:
        """The waiting Creates grouped by task queue and what they ask for, each with why it cannot
        be placed if no connected worker could ever hold it. Sorted by task queue, then oldest first.
        Operator path: walks the waiters once."""
        found: dict[tuple[str, ResourceVector, Selector], list[Waiter]] = {}
        for waiter in self.waiting.all():
            if waiter.target is None and (not task_queue or waiter.task_queue == task_queue):
                found.setdefault((waiter.task_queue, waiter.demand, waiter.selector), []).append(waiter)
        kinds = [
            WaitingKind(queue, demand, selector, len(waiters), min(w.since for w in waiters),
                        self.index.why_unplaceable(queue, demand, selector))
            for (queue, demand, selector), waiters in found.items()
        ]
        return sorted(kinds, key=lambda k: (k.task_queue, k.oldest_since))

    def next_recreates(self, now: float, worker: Worker) -> Iterator[Decision]:
        """The Recreates waiting for ``worker`` to place on it now, FIFO, as (waiter, worker) pairs
        ((waiter, None): expired). One the worker could never hold is passed over, not waited for."""
        queue = self.waiting.for_worker(worker.key)
        if not queue:
            return
        for waiter in list(queue):
            if waiter.done:
                continue
            if waiter.deadline <= now:
                yield waiter, None
                continue
            if not worker.capacity.covers(waiter.demand):
                continue
            if not (worker.eligible and worker.free.covers(waiter.demand)):
                return
            yield waiter, worker


__all__ = ["MAX_SKIPS", "CandidateIndex", "LabelGroup", "Placer", "compatible", "takes_from"]
