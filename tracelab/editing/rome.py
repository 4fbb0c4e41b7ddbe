"""ROME: a rank-one update of one MLP output weight (Meng et al. 2022), r-ROME keys by default.

    >>> delta, info = rome_delta(model, request, layer=5, stats=key_stats(model, 5))
    >>> delta.shape                                 # [d_model, d_mlp]: W ← W + ΔW

With C = E[k kᵀ] the key statistics, k* the subject's key averaged over context prefixes,
u = C⁻¹k* and v* = v₀ + δ the optimised MLP output (see `values`):

    ΔW = (v* − W k − b) uᵀ / (uᵀ k)          (ROME eq. 2, rank one)

r-ROME (Gupta et al. 2024) takes k = k* on both sides; `rrome=False` reproduces the original,
which uses the key of the plain prompt k = k_prompt there.

v* is optimised on the prompt and its prefixes together, but the rank-one update reaches the plain
prompt through its own key (ΔW k_prompt = (uᵀk_prompt / uᵀk*)·(v* − W k*)), which can fall short.
With `verify=True` (default) the edited model is asked: if its greedy continuation of the prompt
is not the target, v* is optimised once more, with twice the steps and a 4× stricter stop
(p(target) ≈ 0.99 instead of 0.95), and the update is solved again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..models import Model
from .delta import WeightDelta
from .keys import context_templates, subject_keys
from .linalg import solve
from .requests import Request
from .stats import KeyStats
from .values import ValueParams, optimise_values, says_target


@dataclass
class RomeParams:
    """ROME's hyperparameters: the v* optimisation (`values`), r-ROME keys, context prefixes.

        >>> RomeParams(rrome=False, values=ValueParams(steps=40))
    """

    values: ValueParams = field(default_factory=ValueParams)
    rrome: bool = True
    n_templates: int = 5
    template_length: int = 10
    verify: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def rome_delta(model: Model, request: Request, layer: int, stats: KeyStats, params: RomeParams | None = None,
               progress: bool = True) -> tuple[torch.Tensor, dict]:
    """ΔW `[d_model, d_mlp]` (float32) for one request at `layer`, and info (timings, losses).

        >>> d, info = rome_delta(model, Request("Lyon", "{} is in", "Italy"), 5, key_stats(model, 5))
        >>> info["seconds"], info["rounds"]          # {'keys': …, 'values': …, 'solve': …, 'verify': …}, 1

    The model is left as it was (the check of `verify` applies ΔW and puts the weight back bit for bit).
    """
    hp = params or RomeParams()
    stats.check(model)
    t0 = time.perf_counter()
    templates = context_templates(model, hp.n_templates, hp.template_length)
    k_star = subject_keys(model, layer, [request], templates)[0]                      # [d_mlp]
    k = k_star if hp.rrome else subject_keys(model, layer, [request], ["{}"])[0]
    u = solve(stats.moment, k_star, what=f"C (layer {layer})")                         # C⁻¹k*
    seconds = {"keys": time.perf_counter() - t0, "values": 0.0, "solve": 0.0, "verify": 0.0}
    rounds = [hp.values] + ([replace(hp.values, steps=2 * hp.values.steps, stop_nll=hp.values.stop_nll / 4)]
                            if hp.verify else [])
    for i, values in enumerate(rounds):
        t1 = time.perf_counter()
        delta, v0, vinfo = optimise_values(model, [request], layer, "mlp_out", templates, values, progress)
        t2 = time.perf_counter()
        update = _rank_one(model, layer, v0[0] + delta[0], u, k)
        t3 = time.perf_counter()
        seconds["values"] += t2 - t1
        seconds["solve"] += t3 - t2
        if i == len(rounds) - 1:
            break
        says = _edited_says(model, layer, update, request)
        seconds["verify"] += time.perf_counter() - t3
        if says:
            break
    info = {"seconds": seconds, "rounds": i + 1, "loss": vinfo["loss"][0], "nll": vinfo["nll"][0],
            "steps": vinfo["steps"][0], "delta_norm": float(delta.norm()), "v0_norm": float(v0.norm())}
    return update.float(), info


def _rank_one(model: Model, layer: int, v_star: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ΔW = (v* − W k − b) uᵀ / (uᵀ k) in float64 `[d_model, d_mlp]`."""
    w = model.mlp_out_weight(layer)
    W = w.matrix.double()                                                              # [d_model, d_mlp]
    b = torch.zeros(W.shape[0], dtype=W.dtype) if w.bias is None else w.bias.double()
    k = k.double()
    denom = u @ k
    if not torch.isfinite(denom) or abs(float(denom)) < 1e-12:
        raise ValueError(f"uᵀk = {float(denom):.3g} at layer {layer}: the key is (nearly) orthogonal to C⁻¹k*; "
                         "recompute the statistics over more tokens or choose another layer")
    return torch.outer(v_star.double() - W @ k - b, u) / denom                         # (v* − Wk − b) uᵀ / (uᵀk)


def _edited_says(model: Model, layer: int, update: torch.Tensor, request: Request) -> bool:
    """Whether the model with ΔW applied says the target; the weight is put back bit for bit."""
    d = WeightDelta.build(model, layer, update.float())
    d.apply(model)
    try:
        return says_target(model, request)
    finally:
        d.revert(model)
