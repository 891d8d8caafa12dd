"""Input complexity in [0, 1] from cheap token statistics, calibrated on the training split.

Signals (both free once the text is tokenized): the number of real tokens, and the fraction of
word-piece continuations ("##" pieces in BERT vocabularies): rare words split into several pieces.
Each signal becomes its percentile among the calibration inputs (an empirical CDF stored in the
bundle); the score is their mean. Same input, same score: no randomness, no model call.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

N_QUANTILES = 101


def _continuation_table(tokenizer) -> torch.Tensor:
    """A boolean table over the vocabulary: True at the ids of "##" pieces (indexing it costs a
    fraction of torch.isin against the ~6k piece ids, once per served batch)."""
    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    table[torch.tensor([i for tok, i in vocab.items() if tok.startswith("##")], dtype=torch.long)] = True
    return table


def raw_signals(
    ids: torch.Tensor, mask: torch.Tensor, continuation: torch.Tensor
) -> tuple[list[float], list[float]]:
    """(real token count, fraction of continuation pieces) per input; ids/mask [B, T]; continuation:
    the vocabulary's boolean table (_continuation_table)."""
    lengths = mask.sum(1)
    known = ids < continuation.numel()  # an id past the vocabulary's table is no "##" piece
    cont = (continuation[ids.clamp(max=continuation.numel() - 1)] & known & mask.bool()).sum(1)
    return lengths.float().tolist(), (cont.float() / lengths.clamp_min(1)).tolist()


def _quantiles(values: list[float]) -> list[float]:
    v = torch.tensor(values, dtype=torch.float64)
    return torch.quantile(v, torch.linspace(0, 1, N_QUANTILES, dtype=torch.float64)).tolist()


def _percentile(q: list[float], x: float) -> float:
    """Empirical CDF from stored quantiles: fraction of calibration inputs at or below x."""
    lo, hi = bisect.bisect_left(q, x), bisect.bisect_right(q, x)
    return min(1.0, max(0.0, ((lo + hi) / 2) / (len(q) - 1) if hi > 0 else 0.0))


@dataclass(frozen=True)
class ComplexityScorer:
    length_q: list[float]
    subword_q: list[float]
    continuation: torch.Tensor

    @classmethod
    def fit(cls, tokenizer, ids_masks) -> ComplexityScorer:
        cont = _continuation_table(tokenizer)
        lengths, subwords = [], []
        for ids, mask in ids_masks:
            batch_lengths, batch_subwords = raw_signals(ids, mask, cont)
            lengths += batch_lengths
            subwords += batch_subwords
        return cls(_quantiles(lengths), _quantiles(subwords), cont)

    @classmethod
    def from_meta(cls, meta: dict, tokenizer) -> ComplexityScorer:
        c = meta["complexity"]
        return cls(c["length_quantiles"], c["subword_quantiles"], _continuation_table(tokenizer))

    def to_meta(self) -> dict:
        return {
            "signals": ["length", "subword_rate"],
            "length_quantiles": self.length_q,
            "subword_quantiles": self.subword_q,
        }

    def signals(self, ids: torch.Tensor, mask: torch.Tensor) -> list[dict]:
        """Per input: the raw signals, their percentiles and the score in [0, 1]."""
        out = []
        for length, sub in zip(*raw_signals(ids, mask, self.continuation)):
            pl, ps = _percentile(self.length_q, length), _percentile(self.subword_q, sub)
            out.append(
                {
                    "tokens": int(length),
                    "subword_rate": round(sub, 4),
                    "length_percentile": round(pl, 4),
                    "subword_percentile": round(ps, 4),
                    "score": round((pl + ps) / 2, 4),
                }
            )
        return out
