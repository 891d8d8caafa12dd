"""dihs_model.levels: the ladder records build_ladder writes, and LadderPolicy's budgets and per-input
decisions from a bundle's meta (levels, complexity quantiles, policy)."""

import pytest
import torch

from dihs_model.arch import EncoderShape
from dihs_model.budget import FULL_NAME, Allocator, Budget
from dihs_model.levels import LadderPolicy, build_ladder
from dihs_model.meta import LevelMeta
from dihs_model.policy import PolicyConfig

SHAPE = EncoderShape(
    n_layers=2, n_heads=4, head_dim=8, hidden=32, ffn=16, attn_dropout=0.0, hidden_dropout=0.0
)
TOKENS = [6, 9, 14]


class Tok:
    """A vocabulary of plain words (ids 0-9) and "##" continuation pieces (ids 10-19)."""

    def get_vocab(self):
        return {f"w{i}": i for i in range(10)} | {f"##p{i}": i for i in range(10, 20)}


def _meta(**extra) -> dict:
    levels = build_ladder(Allocator(SHAPE, TOKENS, "uniform"))
    # every calibration input had 3 tokens and half of them continuation pieces
    complexity = {"length_quantiles": [3.0] * 101, "subword_quantiles": [0.5] * 101}
    return {"levels": levels, "complexity": complexity, **extra}


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


SIMPLE, COMPLEX = [1], [11, 12, 13, 14, 15]  # score 0 (short, no pieces) and 1 (long, only pieces)


def test_the_ladder_starts_at_the_full_model_and_records_each_target():
    targets = (1.0, 0.6, 0.3)
    ladder = build_ladder(Allocator(SHAPE, TOKENS, "uniform"), targets)
    assert [lv["name"] for lv in ladder] == [FULL_NAME, "f60", "f30"]
    assert [lv["target_flops_ratio"] for lv in ladder] == list(targets)
    assert ladder[0]["flops_ratio"] == 1.0 and ladder[0]["heads"] == [4, 4]
    for lv in ladder:
        LevelMeta.model_validate(lv)  # what dihs.json accepts
        assert lv["flops_ratio"] == pytest.approx(Budget.from_meta(lv).flops_ratio(SHAPE, TOKENS), abs=5e-5)
    ratios = [lv["flops_ratio"] for lv in ladder]
    assert ratios == sorted(ratios, reverse=True) and len(set(ratios)) == 3


def test_budgets_come_from_the_levels_and_level_zero_is_the_full_models_exact_path():
    meta = _meta()
    ladder = LadderPolicy(meta, Tok())
    assert ladder.budget_of(0) is None
    for i in range(1, len(meta["levels"])):
        lv = meta["levels"][i]
        assert ladder.budget_of(i) == Budget(lv["name"], lv["heads"], lv["neurons"])
    assert ladder.ratios == [lv["flops_ratio"] for lv in meta["levels"]]


def test_no_pressure_gives_every_input_the_full_model():
    ids, mask = _batch([SIMPLE, COMPLEX])
    signals, decisions = LadderPolicy(_meta(), Tok()).decide(ids, mask, 0.0, [("auto", 0.0, 1.0)] * 2)
    assert [s["score"] for s in signals] == [0.0, 1.0]
    assert [d.level for d in decisions] == [0, 0]


def test_under_full_pressure_the_policy_spares_complex_inputs_as_configured():
    ids, mask = _batch([SIMPLE, COMPLEX])
    limits = [("auto", 0.0, 1.0)] * 2
    meta = _meta()
    last = len(meta["levels"]) - 1
    # protect 1: a maximally complex input keeps the full model, a simple one falls to the floor
    _, spared = LadderPolicy(meta, Tok(), PolicyConfig(protect=1.0)).decide(ids, mask, 1.0, limits)
    assert [d.level for d in spared] == [last, 0]
    # protect 0: complexity has no say
    _, flat = LadderPolicy(meta, Tok(), PolicyConfig(protect=0.0)).decide(ids, mask, 1.0, limits)
    assert [d.level for d in flat] == [last, last]


def test_the_policy_defaults_to_the_bundles_measured_auroc():
    ids, mask = _batch([SIMPLE, COMPLEX])
    chance = {"signals": {"signals": {"length_and_subword": {"auroc": 0.5}}}}  # protect 0
    ladder = LadderPolicy(_meta(cascade=chance), Tok())
    assert ladder.policy == PolicyConfig(protect=0.0)
    _, decisions = ladder.decide(ids, mask, 1.0, [("auto", 0.0, 1.0)] * 2)
    assert decisions[0].level == decisions[1].level == len(ladder.ratios) - 1


def test_each_input_keeps_its_own_mode_and_limits():
    ids, mask = _batch([SIMPLE, SIMPLE, SIMPLE])
    ladder = LadderPolicy(_meta(), Tok())
    half = ladder.ratios.index(next(r for r in ladder.ratios if r <= 0.5))
    limits = [("dense", 0.0, 1.0), ("fixed", 0.0, 0.5), ("auto", 0.7, 1.0)]
    _, decisions = ladder.decide(ids, mask, 1.0, limits)
    assert decisions[0].level == 0
    assert decisions[1].level == half
    assert ladder.ratios[decisions[2].level] >= 0.7 and decisions[2].level > 0
