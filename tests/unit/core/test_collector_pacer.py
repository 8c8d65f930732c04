"""CollectorPacer: what is alive leaves the cyclic collector's sight; cyclic garbage frozen
while in use is still found, by a full collection once the frozen objects grew enough."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from fleetgate.app import CollectorPacer


class Node:
    """A container that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    """The pacer freezes the test process's heap: give it back to the collector."""
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


def test_tick_moves_what_is_alive_out_of_the_collectors_generations() -> None:
    pacer = CollectorPacer(full_after=10**9)
    alive = [Node() for _ in range(100)]
    frozen_before = gc.get_freeze_count()
    pacer.tick()
    assert gc.get_freeze_count() >= frozen_before + len(alive)
    young = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert not any(id(node) in young for node in alive)


def test_acyclic_objects_are_freed_by_reference_count_once_frozen() -> None:
    pacer = CollectorPacer(full_after=10**9)
    node = Node()
    ref = weakref.ref(node)
    pacer.tick()
    del node
    assert ref() is None


def test_cyclic_garbage_frozen_while_in_use_waits_for_a_full_collection() -> None:
    pacer = CollectorPacer(full_after=10**9)
    head, ref = cycle()
    pacer.tick()
    del head
    gc.collect()  # the permanent generation is out of every collection's sight
    assert ref() is not None
    assert pacer.full_collections == 0


def test_full_collection_once_the_frozen_objects_grew_past_the_bound() -> None:
    gc.freeze()  # what the server froze at start-up (settle_garbage_collector)
    pacer = CollectorPacer(full_after=1000)
    bound = max(gc.get_freeze_count(), 1000)
    head, ref = cycle()
    pacer.tick()
    assert pacer.full_collections == 0
    del head
    growth = [Node() for _ in range(bound + 10)]
    pacer.tick()
    assert pacer.full_collections == 1
    assert ref() is None
    # The survivors are frozen again, and they are the new baseline: no collection for
    # the same working set at the next tick.
    assert gc.get_freeze_count() >= len(growth)
    pacer.tick()
    assert pacer.full_collections == 1


def test_a_steady_heap_is_not_walked_at_every_tick() -> None:
    gc.freeze()
    pacer = CollectorPacer(full_after=100_000)
    working_set = [Node() for _ in range(1000)]
    for _ in range(5):
        working_set = [Node() for _ in range(1000)]  # replaced, as records in flight are
        pacer.tick()
    assert pacer.counts == 0
    assert pacer.full_collections == 0
    assert working_set


def test_heap_growth_without_frozen_growth_is_counted_once_not_at_every_tick() -> None:
    gc.freeze()
    pacer = CollectorPacer(full_after=1000)
    room = max(gc.get_freeze_count(), 1000)
    numbers = [int(f"{n}1000") for n in range(room + 10)]  # blocks, not collector objects
    pacer.tick()
    assert pacer.counts == 1
    assert pacer.full_collections == 0
    pacer.tick()
    pacer.tick()
    assert pacer.counts == 1
    assert numbers


async def test_runs_on_the_loop_until_stopped() -> None:
    pacer = CollectorPacer(interval_s=0.001, full_after=10**9)
    pacer.start()
    node = Node()
    try:
        # The pacer's timer is due before this sleep ends: timers run in deadline order.
        await asyncio.sleep(0.01)
        assert not _in_generations(node)
    finally:
        pacer.stop()
    gc.unfreeze()
    await asyncio.sleep(0.01)
    assert gc.get_freeze_count() == 0  # nothing froze anything after stop
    assert _in_generations(node)


def _in_generations(node: Node) -> bool:
    """Whether ``node`` is in one of the collector's generations (not frozen)."""
    return any(o is node for generation in range(3) for o in gc.get_objects(generation))
