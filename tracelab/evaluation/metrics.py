"""Scoring primitives: teacher-forced target scores, and n-gram entropy of generated text.

    >>> s = score_targets(model, ["The Eiffel Tower is in"], ["Paris"])
    >>> s.mean_nll, s.accuracy, s.argmax                # per prompt

Two conventions, since published numbers differ mostly by metric definition:

- ROME / CounterFact (Meng et al. 2022): compare the probabilities of the new and the true
  answer (mean per-token NLL of each): efficacy / paraphrase score = fraction of prompts where
  the new answer is likelier, neighbourhood score = fraction where the true one still is;
  magnitudes = mean P(new) − P(true) (resp. P(true) − P(new)), P = exp(−mean NLL).
  Fluency = weighted 2-/3-gram entropy of generations (ROME's `n_gram_entropy`).
- EasyEdit (Wang et al. 2024): teacher-forced token accuracy of the target — reliability
  (edit prompt), generality (paraphrases), locality (neighbour prompts: agreement of the
  argmax tokens after the edit with those before it).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from ..models import Model


@dataclass
class TargetScores:
    """Per prompt: `mean_nll` (mean over the target's tokens), `accuracy` (fraction of target tokens
    that are the argmax), `argmax` (the argmax token ids at the target positions)."""

    mean_nll: list[float]
    accuracy: list[float]
    argmax: list[list[int]]

    @property
    def prob(self) -> list[float]:
        return [math.exp(-x) for x in self.mean_nll]


@torch.no_grad()
def score_targets(model: Model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> TargetScores:
    """Teacher-forced scores of `targets[i]` after `prompts[i]` (see `TargetScores`)."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    prompts = model.query_text(prompts)  # as the model is asked (after an in-context edit's context)
    out = TargetScores([], [], [])
    pad = model.tokenizer.pad_token_id
    for i in range(0, len(prompts), batch_size):
        rows = []
        for p, t in zip(prompts[i:i + batch_size], targets[i:i + batch_size]):
            ids, tgt = model.tokenizer(p)["input_ids"], model.target_ids(p, t)
            rows.append((ids + tgt, len(ids), tgt))
        width = max(len(r[0]) for r in rows)
        ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows], device=model.device)
        with model.native():
            logp = model.hf(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for j, (_, n, tgt) in enumerate(rows):
            at = torch.arange(n - 1, n - 1 + len(tgt), device=model.device)
            lp = logp[j, at]                                                   # [n_target, vocab]
            tgt_t = torch.tensor(tgt, device=model.device)
            out.mean_nll.append(float(-lp[torch.arange(len(tgt)), tgt_t].mean()))
            am = lp.argmax(-1)
            out.accuracy.append(float((am == tgt_t).float().mean()))
            out.argmax.append(am.tolist())
    return out


def n_gram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency measure: weighted mean of the entropies (bits) of the n-gram distributions.

        >>> round(n_gram_entropy("the cat the cat the cat"), 2) < round(n_gram_entropy("a b c d e f g"), 2)
        True
    """
    words = text.split()
    entropies = []
    for n in ns:
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropies.append(-sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return float(sum(w * e for w, e in zip(weights, entropies)) / sum(weights))


@torch.no_grad()
def generate(model: Model, prompts: Sequence[str], max_new_tokens: int = 50) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batch), without the prompt."""
    tok = model.tokenizer
    tok.padding_side = "left"
    try:
        enc = tok(model.query_text(prompts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    with model.native():
        out = model.hf.generate(input_ids=enc["input_ids"].to(model.device),
                                attention_mask=enc["attention_mask"].to(model.device),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
