"""service/backend.py: every text of a request counts in the load tracker from arrival to answer, a
failed request leaves no text counted, and each answered text gets one duration sample."""

import asyncio

import pytest

from service.backend import EngineBackend
from service.engine import Engine
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.routing import Item
from tests.conftest import tiny_calibrated_bundle


@pytest.fixture
def engine(tmp_path):
    return Engine(
        tiny_calibrated_bundle(tmp_path),
        "tiny",
        LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)),
        NullMetrics(),
    )


def _durations(engine) -> list[dict]:
    return [tags for name, _, tags in engine.metrics.log if name == "dihs_request_duration_seconds"]


def test_answered_texts_leave_the_queue_with_one_duration_each(engine):
    backend = EngineBackend(engine, "tiny")
    results = asyncio.run(backend.classify([Item("good fun"), Item("bad", mode="dense")]))
    assert [r["level"] for r in results] == ["f100", "f100"] and engine.load.queue_depth == 0
    assert _durations(engine) == [{"level": "f100"}, {"level": "f100"}]
    assert backend.info.name == "tiny" and backend.info.labels == ["neg", "pos"]


def test_a_failed_request_leaves_nothing_in_the_queue_and_no_duration(engine):
    seen = []

    async def failing(items, timing):
        seen.append(engine.load.queue_depth)  # the texts are counted while they wait
        raise RuntimeError("replica gone")

    with pytest.raises(RuntimeError, match="replica gone"):
        asyncio.run(EngineBackend(engine, "tiny", submit=failing).classify([Item("a"), Item("b"), Item("c")]))
    assert seen == [3] and engine.load.queue_depth == 0 and _durations(engine) == []
