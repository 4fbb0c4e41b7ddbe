"""One causal-tracing problem, shared by the engines: tokens, corruption, target, metric, window.

    >>> problem = Problem.build(model, prompt, subject, target, corruption=GaussianNoise(), ...)
    >>> problem.window_layers(12)            # layers whose MLP/attention a cell at layer 12 restores
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ..models.hooks import Site, intervene
from .corruption import Corrupted
from .metrics import Metric


@dataclass
class Problem:
    """Everything the engines need: `ids` `[1, n]`, subject `span`, the `corrupted` run, the
    `metric`, the MLP/attention `window`, and the clean/corrupted scores."""

    model: object
    ids: torch.Tensor
    span: tuple[int, int]
    corrupted: Corrupted
    metric: Metric
    window: int
    kinds: tuple[str, ...]
    clean_score: float
    corrupted_scores: torch.Tensor  # [samples]
    clean_top: int  # the clean run's top-1 token id
    _clean: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # clean_sites(), once

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[1]

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    def window_layers(self, layer: int) -> range:
        """The paper's window of `window` layers centred on `layer`, clipped at the ends."""
        w = self.window
        return range(max(0, layer - w // 2), min(self.n_layers, layer - (-w // 2)))

    def restored_sites(self, kind: str, layer: int) -> list[Site]:
        """Sites whose clean value a cell (kind, layer) writes back at its token."""
        if kind == "resid":
            return [self.model.resid(layer)]
        site = self.model.mlp_out if kind == "mlp" else self.model.attn_out
        return [site(j) for j in self.window_layers(layer)]

    def clean_sites(self) -> dict[str, torch.Tensor]:
        """Clean values of every block output, MLP and attention output, keyed by site name `[1, n, d]`
        (recorded by the clean run when it ran in this process)."""
        if self._clean is None:
            with torch.no_grad():
                _, self._clean = record_clean_run(self.model, self.ids)
        return self._clean

    def empty_scores(self) -> dict[str, torch.Tensor]:
        """`{kind: [samples, n_layers, n_tokens]}` filled with each sample's corrupted score."""
        base = self.corrupted_scores[:, None, None].expand(-1, self.n_layers, self.n_tokens)
        return {kind: base.clone() for kind in self.kinds}

    @classmethod
    def build(cls, model, ids, span, target_id: int | None, corrupted: Corrupted, metric: str, foil: int | None,
              window: int, kinds: tuple[str, ...], dtype_name: str, last_logits=None) -> "Problem":
        """Run clean and corrupted once, check them, fix the target (None: the clean top-1), the
        metric and the foil (for logit_diff). `last_logits(ids, corrupted | None)` → `[rows,
        vocab]` runs them (default: this process's model; the nnsight engine passes its own)."""
        run = last_logits or (lambda x, c: local_last_logits(model, x, c))
        clean_sites = None
        with torch.no_grad():
            if last_logits is None:  # one clean run gives its logits and every site the engines restore
                clean_logits, clean_sites = record_clean_run(model, ids)
            else:
                clean_logits = run(ids, None)
            clean_logits = clean_logits.float()
            corrupt_logits = run(corrupted.ids, corrupted).float()
        if not torch.isfinite(corrupt_logits).all():
            raise FloatingPointError(
                f"the corrupted run produced NaN/inf logits in {dtype_name}: the noise is too large for "
                f"this dtype, or the model overflows in it; trace in float32 (dtype='float32') or use a "
                "smaller GaussianNoise(scale=...)")
        clean_top = int(clean_logits[0].argmax())
        target_id = clean_top if target_id is None else target_id
        if metric == "logit_diff" and foil is None:  # the corrupted run's favourite other token
            probs = corrupt_logits.softmax(-1).mean(0)
            probs[target_id] = -1
            foil = int(probs.argmax())
        score = Metric(metric, target_id, foil)
        return cls(model, ids, span, corrupted, score, window, kinds, float(score(clean_logits)[0]),
                   score(corrupt_logits).cpu(), clean_top, clean_sites)


def record_clean_run(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Last-position logits `[1, vocab]` of the clean prompt, and every block output, MLP and
    attention output `{site name: [1, n, d]}` of that run."""
    sites = [s for l in range(model.n_layers) for s in (model.resid(l), model.mlp_out(l), model.attn_out(l))]
    with model.record(sites) as cache:
        logits = model.hf(input_ids=ids, logits_to_keep=1).logits[:, -1]
    return logits, cache


def local_last_logits(model, ids: torch.Tensor, corrupted: Corrupted | None) -> torch.Tensor:
    """Last-position logits `[rows, vocab]` of `ids`, with the corruption's embedding patch if given."""
    patches = {model.embed: corrupted.embed_fn} if corrupted is not None and corrupted.embed_fn else {}
    with intervene(model, patches):
        return model.hf(input_ids=ids, logits_to_keep=1).logits[:, -1]


def warn_unknown(model, prompt: str, target_id: int, clean_top: int) -> None:
    """Warn when the model does not predict the target: tracing a fact it doesn't know is noise."""
    if clean_top != target_id:
        tok = model.tokenizer
        warnings.warn(
            f"the model predicts {tok.decode([clean_top])!r} after {prompt!r}, not the target "
            f"{tok.decode([target_id])!r}: the trace of a fact the model does not know is mostly noise",
            stacklevel=3)
