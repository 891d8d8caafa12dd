"""Fine-tuning's epochs: a small set is recycled until an epoch has min_epoch_examples examples, a
large one is passed over once, and every example is seen before any is seen again."""

import random
from collections import Counter

import pytest

from dihs_model.data import Examples
from dihs_model.train import TrainConfig, _epoch_batches


def _examples(n: int) -> Examples:
    return Examples([f"text {i} " + "x" * (i % 7) for i in range(n)], [i % 2 for i in range(n)], ["a", "b"])


@pytest.mark.parametrize(
    "n,batch,min_examples,steps",
    [(10, 4, 0, 3), (10, 4, 40, 10), (10, 4, 41, 11), (100, 8, 40, 13), (4640, 32, 4640, 145)],
)
def test_an_epoch_has_at_least_min_epoch_examples(n, batch, min_examples, steps):
    cfg = TrainConfig(batch_size=batch, min_epoch_examples=min_examples)
    assert cfg.steps_per_epoch(n) == steps
    batches = _epoch_batches(_examples(n), cfg, random.Random(0))
    assert len(batches) == steps and all(1 <= len(b) <= batch for b in batches)


def test_a_recycled_epoch_sees_every_example_once_per_pass():
    n, cfg = 12, TrainConfig(batch_size=4, min_epoch_examples=36)  # exactly three passes
    seen = Counter(i for b in _epoch_batches(_examples(n), cfg, random.Random(1)) for i in b)
    assert seen == Counter({i: 3 for i in range(n)})
