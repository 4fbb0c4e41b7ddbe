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


def score_targets(model: Model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> TargetScores:
    """Teacher-forced scores of `targets[i]` after `prompts[i]`, as the model is asked
    (`Model.query_text`: after an in-context edit's context); see `TargetScores`."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    out = TargetScores([], [], [])
    for rows, ids in model.target_log_probs(model.query_text(prompts), targets, batch_size):
        ids = torch.tensor(ids, device=rows.device)
        out.mean_nll.append(float(-rows[torch.arange(len(ids)), ids].mean()))
        argmax = rows.argmax(-1)
        out.accuracy.append(float((argmax == ids).float().mean()))
        out.argmax.append(argmax.tolist())
    return out


def gives(model: Model, asks: Sequence[tuple[str, Sequence[str]]]) -> list[bool]:
    """Per `(prompt, answers)`: whether the model gives one of the answers, every token of it the
    greedy choice after the prompt (teacher-forced, as the model is asked).

        >>> gives(model, [("The Eiffel Tower is in the city of", ("Paris",))])    # [True]
    """
    pairs = [(i, p, a) for i, (p, answers) in enumerate(asks) for a in answers]
    if not pairs:
        return []
    accuracy = score_targets(model, [p for _, p, _ in pairs], [a for *_, a in pairs]).accuracy
    given = [False] * len(asks)
    for (i, _, _), acc in zip(pairs, accuracy):
        given[i] = given[i] or acc == 1.0
    return given


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


def generate(model: Model, prompts: Sequence[str], max_new_tokens: int = 50) -> list[str]:
    """Greedy continuations of `prompts` as the model is asked (`query_text`), without the prompt."""
    _, new = model.generate(model.query_text(prompts), max_new_tokens)
    return model.tokenizer.batch_decode(new, skip_special_tokens=True)
