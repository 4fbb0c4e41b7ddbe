"""What steering should change: a behaviour score on held-out prompts.

    >>> m = BehaviourMetric(["I thought the film was"], [" great", " good"], [" bad", " awful"])
    >>> m(model)                                   # [n_prompts] log P(positive) - log P(negative)
    >>> with steer(model, v, alpha=4.0):
    ...     m(model).mean()                        # higher when steered towards the positive side
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class BehaviourMetric:
    """Next-token preference for positive over negative words on held-out prompts.

        >>> m = BehaviourMetric(prompts, positive=[" great"], negative=[" awful"])
        >>> m(model)                               # tensor [n_prompts]

    score(prompt) = log Σ_{w ∈ positive} P(w | prompt) − log Σ_{w ∈ negative} P(w | prompt),
    over each word's first token. `positive`/`negative` are either one word list shared by all
    prompts or one list per prompt (e.g. the true and the false answer of a fact).
    """

    prompts: Sequence[str]
    positive: Sequence
    negative: Sequence
    name: str = "behaviour"

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("a BehaviourMetric needs at least one prompt")
        for side in ("positive", "negative"):
            words = getattr(self, side)
            if not words:
                raise ValueError(f"a BehaviourMetric needs {side} words, got none")
            if not isinstance(words[0], str) and len(words) != len(self.prompts):
                raise ValueError(f"{side} has {len(words)} word lists for {len(self.prompts)} prompts: give "
                                 f"one shared list of words or one list per prompt")

    def _words(self, side: str, i: int) -> list[str]:
        words = getattr(self, side)
        words = words if isinstance(words[0], str) else words[i]
        return [words] if isinstance(words, str) else list(words)

    def token_ids(self, model) -> tuple[list[list[int]], list[list[int]]]:
        """First-token ids of the positive and negative words, per prompt."""
        def ids(side: str, i: int) -> list[int]:
            return sorted({model.target_ids(self.prompts[i], w)[0] for w in self._words(side, i)})

        return ([ids("positive", i) for i in range(len(self.prompts))],
                [ids("negative", i) for i in range(len(self.prompts))])

    def score(self, log_probs: torch.Tensor, model) -> torch.Tensor:
        """The score from next-token log-probabilities `[n_prompts, vocab]` → `[n_prompts]`."""
        pos, neg = self.token_ids(model)
        return torch.stack([lp[p].logsumexp(0) - lp[n].logsumexp(0) for lp, p, n in zip(log_probs, pos, neg)])

    def __call__(self, model) -> torch.Tensor:
        """Score the prompts under whatever interventions are active: `[n_prompts]` (nats)."""
        return self.score(model.next_token_logits(list(self.prompts)).log_softmax(-1), model)
