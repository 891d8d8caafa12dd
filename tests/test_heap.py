"""service.heap: freeze and refreeze (a swap's released bundle is freed); CollectionTimer's pause records
and slow-collection log on a hand-moved clock (test_replica runs it against real collections)."""

import gc
import logging
import types
import weakref

import pytest

from service import heap
from tests.conftest import ManualClock


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self):
        self.me = self


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_frozen_objects_survive_collections_until_a_refreeze(unfrozen):
    node = Node()
    alive = weakref.ref(node)
    heap.freeze()
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert alive() is not None  # frozen: the collector no longer scans it
    heap.refreeze()
    assert alive() is None
    assert gc.get_freeze_count() > 0  # what is alive now is frozen again


def test_freeze_collects_garbage_first(unfrozen):
    node = Node()
    alive = weakref.ref(node)
    del node
    heap.freeze()
    assert alive() is None  # not frozen in as garbage


@pytest.fixture
def timer(monkeypatch):
    clock = ManualClock(100.0)
    monkeypatch.setattr(heap, "time", types.SimpleNamespace(perf_counter=clock))
    t = heap.CollectionTimer()
    t.clock = clock
    return t


def _collection(timer, generation: int, seconds: float, collected: int = 0) -> None:
    timer("start", {"generation": generation})
    timer.clock.advance(seconds)
    timer("stop", {"generation": generation, "collected": collected})


def test_pauses_are_recorded_by_generation_and_taken_once(timer):
    _collection(timer, 0, 0.001)
    _collection(timer, 2, 0.25)
    pauses = timer.take_pauses()
    assert [g for g, _ in pauses] == [0, 2]
    assert [s for _, s in pauses] == [pytest.approx(0.001, abs=1e-9), pytest.approx(0.25, abs=1e-9)]
    assert timer.take_pauses() == []


def test_a_stop_without_its_start_records_nothing(timer):
    timer("stop", {"generation": 1, "collected": 0})  # started while the timer was not yet registered
    assert timer.take_pauses() == []


def test_only_slow_collections_are_logged(timer, caplog):
    with caplog.at_level(logging.WARNING, logger="dihs.heap"):
        _collection(timer, 1, heap.SLOW_GC_S / 2)
        _collection(timer, 2, heap.SLOW_GC_S * 4, collected=12)
    msgs = [r.getMessage() for r in caplog.records if r.name == "dihs.heap"]
    want = f"{heap.SLOW_GC_S * 4 * 1e3:.0f} ms"
    assert msgs == [f"garbage collection (generation 2, 12 objects freed) paused the replica for {want}"]
    assert len(timer.take_pauses()) == 2  # fast ones are still recorded


def test_stopping_a_timer_that_never_started_leaves_the_callbacks_alone():
    t = heap.CollectionTimer()
    before = list(gc.callbacks)
    t.stop()
    assert gc.callbacks == before
    try:
        t.start()
    finally:
        t.stop()
    assert gc.callbacks == before
