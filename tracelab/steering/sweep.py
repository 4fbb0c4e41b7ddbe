"""How much to steer: a sweep of α with the behaviour it buys and the damage it does.

    >>> s = contrast_set("sentiment")
    >>> v = caa(model, s.pairs, layers=[10])
    >>> r = sweep(model, v, [-8, -4, -2, 0, 2, 4, 8], s.behaviour)
    >>> r.behaviour.mean(1)                        # [n_alphas] mean behaviour score
    >>> r.kl, r.fluency                            # [n_alphas] KL to unsteered, NLL of steered text
    >>> r.figure().show(); r.save("out/sweep")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..io import load_tensors, save_tensors
from .apply import Steering, _terms, generate_ids, steer
from .metrics import BehaviourMetric


@dataclass
class SweepResult:
    """Behaviour, KL-to-unsteered and fluency at each α (see `sweep`).

    `alphas` `[n_alphas]`; `behaviour` `[n_alphas, n_prompts]` (the metric, nats); `kl`
    `[n_alphas]` mean KL(p_steered ‖ p_unsteered) of the next token over the prompts; `fluency`
    `[n_alphas]` mean negative log-likelihood per token (nats) of the steered continuations under
    the unsteered model (lower reads more natural; empty when not measured); `samples` one
    steered continuation of the first prompt per α; `meta` (metric, vector, layers, positions).
    """

    alphas: torch.Tensor
    behaviour: torch.Tensor
    kl: torch.Tensor
    fluency: torch.Tensor
    samples: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table, one row per α."""
        rows = [f"{'alpha':>7} {'behaviour':>10} {'KL':>8} {'fluency':>8}  sample"]
        for i, a in enumerate(self.alphas.tolist()):
            flu = f"{float(self.fluency[i]):8.3f}" if len(self.fluency) else f"{'-':>8}"
            sample = repr(self.samples[i].replace("\n", " ")[:50]) if self.samples else ""
            rows.append(f"{a:7.2f} {float(self.behaviour[i].mean()):10.3f} {float(self.kl[i]):8.4f} {flu}  {sample}")
        return "\n".join(rows)

    def figure(self):
        """Plotly line chart of behaviour and KL/fluency against α (`viz.steering_figures`)."""
        from ..viz.steering_figures import sweep_figure

        return sweep_figure(self)

    def save(self, path: str | os.PathLike) -> str:
        """Write `<path>.safetensors` + `<path>.json`; returns the stem."""
        tensors = {"alphas": self.alphas, "behaviour": self.behaviour, "kl": self.kl, "fluency": self.fluency}
        meta = {"kind": "tracelab.SweepResult", "samples": self.samples, "meta": self.meta}
        return str(save_tensors(path, tensors, meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SweepResult":
        """Read what `save` wrote."""
        t, meta = load_tensors(path)
        if meta.get("kind") != "tracelab.SweepResult":
            raise ValueError(f"{path} holds {meta.get('kind', 'something else')!r}, not a saved SweepResult")
        return cls(t["alphas"], t["behaviour"], t["kl"], t["fluency"], meta["samples"], meta["meta"])


@torch.no_grad()
def _fluency(model, prompts: Sequence[str], n_tokens: int, context) -> tuple[float, str]:
    """Generate `n_tokens` under `context` (the steering), then score them unsteered:
    mean −log p₀(y_t | x, y_<t) over generated tokens, and the first prompt's continuation."""
    with context:
        batch, new = generate_ids(model, prompts, max_new_tokens=n_tokens)
    # Tokens up to and including the first end-of-text count; what follows is padding.
    ended = (new == model.tokenizer.eos_token_id).long().cumsum(1)
    valid = (ended - (new == model.tokenizer.eos_token_id).long()) == 0
    ids = torch.cat([batch["input_ids"], new], 1)
    mask = torch.cat([batch["attention_mask"], valid.long()], 1)
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    with model.native():
        logits = model.hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.float()
    n = batch["input_ids"].shape[1]
    log_probs = logits[:, n - 1 : -1].log_softmax(-1).gather(-1, new[..., None])[..., 0]  # [batch, new]
    nll = -(log_probs * valid).sum() / valid.sum().clamp_min(1)
    text = model.tokenizer.decode(new[0][valid[0]], skip_special_tokens=True)
    return float(nll), text


def sweep(
    model, vector: Steering, alphas: Sequence[float], metric: BehaviourMetric, *,
    layers: int | Sequence[int] | None = None, positions: str | Sequence[int] = "all",
    norm_match: bool = False, fluency_tokens: int = 20, progress: bool = True,
) -> SweepResult:
    """Score steering at each α: behaviour on the metric's prompts, KL to unsteered, fluency.

        >>> r = sweep(model, v, [-4, 0, 4], contrast_set("sentiment").behaviour)
        >>> r.behaviour.mean(1)                    # rises with α for a positive-side vector

    KL_α = mean over prompts of Σ_w p_α(w) (log p_α(w) − log p_0(w)) at the next token.
    `fluency_tokens` > 0 also generates that many tokens greedily per prompt at each α and
    reports their mean NLL under the unsteered model (0 skips it). Other options as in `steer`.
    """
    if not len(alphas):
        raise ValueError("no alphas given: pass e.g. [-8, -4, 0, 4, 8]")
    if not isinstance(metric, BehaviourMetric):
        raise TypeError(f"metric must be a BehaviourMetric (e.g. contrast_set('sentiment').behaviour), got {type(metric).__name__}")
    prompts = list(metric.prompts)
    terms = _terms(vector, 1.0)
    base = model.next_token_logits(prompts).log_softmax(-1)  # [n_prompts, vocab]
    behaviour, kl, fluency, samples = [], [], [], []
    for alpha in tqdm(list(alphas), desc="alpha sweep", disable=not progress):
        def context():
            return steer(model, [(v, a * float(alpha)) for v, a in terms], layers=layers,
                         positions=positions, norm_match=norm_match)

        with context():
            log_probs = model.next_token_logits(prompts).log_softmax(-1)
        behaviour.append(metric.score(log_probs, model))
        kl.append((log_probs.exp() * (log_probs - base)).sum(-1).mean())
        if fluency_tokens > 0:
            nll, text = _fluency(model, prompts, fluency_tokens, context())
            fluency.append(nll)
            samples.append(text)
    vectors = [{"method": v.method, "layers": v.layers, "weight": a} for v, a in terms]
    meta = {"metric": metric.name, "vectors": vectors, "layers": layers, "positions": positions,
            "norm_match": norm_match, "prompts": prompts, "fluency_tokens": fluency_tokens}
    return SweepResult(torch.tensor([float(a) for a in alphas]), torch.stack(behaviour), torch.stack(kl),
                       torch.tensor(fluency), samples, meta)
