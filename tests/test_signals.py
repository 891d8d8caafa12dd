"""The complexity-signal report: every signal scored against the small budget's errors, with its cost."""

import numpy as np
import torch
from transformers import BertTokenizerFast

from dihs_model.complexity import ComplexityScorer
from dihs_model.passes import Passes
from dihs_model.signals import _auroc, signal_report
from tests.conftest import WORDS
from tests.test_cascade import _allocator, _batches, _confident_tiny


def test_auroc_is_one_for_a_signal_that_ranks_every_error_first_and_none_without_both_kinds():
    wrong = np.array([0, 1, 0, 1, 0], dtype=bool)
    assert _auroc(wrong, np.array([0.1, 0.9, 0.2, 0.8, 0.3])) == 1.0
    assert _auroc(wrong, np.array([0.9, 0.1, 0.8, 0.2, 0.7])) == 0.0
    assert _auroc(np.zeros(5, dtype=bool), np.arange(5.0)) is None


def test_signal_report_scores_every_signal_with_its_cost():
    model = _confident_tiny()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    scores = _allocator(model)
    tok = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "##s"] + WORDS)}
    )
    scorer = ComplexityScorer.fit(tok, [(ids, mask) for _, ids, mask, _ in batches])
    report = signal_report(Passes(model, batches, len(labels)), labels, scores, scorer)
    assert report["n"] == len(labels) and 0 < report["errors"] < len(labels)
    sig = report["signals"]
    assert {
        "length",
        "subword_rate",
        "length_and_subword",
        "probe_after_layer_1",
        "probe_after_layer_2",
    } <= set(sig)
    assert any(k.startswith("small_pass_") for k in sig)
    for name, s in sig.items():
        assert s["auroc"] is None or 0.0 <= s["auroc"] <= 1.0, name
        assert 0.0 <= s["flops_share"] < 1.0, name
    assert sig["probe_after_layer_1"]["flops_share"] == round(1 / 3, 4)  # 1 of the tiny model's 3 layers
    assert (
        signal_report(Passes(model, batches, len(labels)), labels, scores, scorer) == report
    )  # deterministic
