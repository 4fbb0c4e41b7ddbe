"""What a run is scored by: the target's probability, log-probability, or logit difference.

    >>> score = Metric("prob", target=7342)
    >>> score(logits)                        # logits [batch, vocab] → [batch] float32

Indirect effect of a restoration = score(restored run) − score(corrupted run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METRICS = ("prob", "log_prob", "logit_diff")


@dataclass(frozen=True)
class Metric:
    """`prob` = p(target), `log_prob` = log p(target), `logit_diff` = logit(target) − logit(foil).

        >>> Metric("logit_diff", target=7342, foil=11)(logits)      # [batch]
    """

    name: str
    target: int
    foil: int | None = None

    def __post_init__(self):
        if self.name not in METRICS:
            raise ValueError(f"unknown metric {self.name!r}; choose one of {METRICS}")
        if self.name == "logit_diff" and self.foil is None:
            raise ValueError("metric 'logit_diff' needs a foil token id")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.name == "logit_diff":
            return logits[:, self.target] - logits[:, self.foil]
        log_probs = logits.log_softmax(-1)[:, self.target]
        return log_probs if self.name == "log_prob" else log_probs.exp()

    @property
    def label(self) -> str:
        return {"prob": "p(target)", "log_prob": "log p(target)", "logit_diff": "logit diff"}[self.name]

