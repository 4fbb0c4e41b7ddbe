"""ROME: a rank-one update of one MLP output weight (Meng et al. 2022), r-ROME keys by default.

    >>> delta, info = rome_delta(model, request, layer=5, stats=key_stats(model, 5))
    >>> delta.shape                                 # [d_model, d_mlp]: W ← W + ΔW

With C = E[k kᵀ] the key statistics, k* the subject's key averaged over context prefixes,
u = C⁻¹k* and v* = v₀ + δ the optimised MLP output (see `values`):

    ΔW = (v* − W k − b) uᵀ / (uᵀ k)          (ROME eq. 2, rank one)

r-ROME (Gupta et al. 2024) takes k = k* on both sides; `rrome=False` reproduces the original,
which uses the key of the plain prompt k = k_prompt there.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..models import Model
from .keys import context_templates, subject_keys
from .linalg import solve
from .requests import Request
from .stats import KeyStats
from .values import ValueParams, optimise_values


@dataclass
class RomeParams:
    """ROME's hyperparameters: the v* optimisation (`values`), r-ROME keys, context prefixes.

        >>> RomeParams(rrome=False, values=ValueParams(steps=40))
    """

    values: ValueParams = field(default_factory=ValueParams)
    rrome: bool = True
    n_templates: int = 5
    template_length: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def rome_delta(model: Model, request: Request, layer: int, stats: KeyStats, params: RomeParams | None = None,
               progress: bool = True) -> tuple[torch.Tensor, dict]:
    """ΔW `[d_model, d_mlp]` (float32) for one request at `layer`, and info (timings, losses).

        >>> d, info = rome_delta(model, Request("Lyon", "{} is in", "Italy"), 5, key_stats(model, 5))
        >>> info["seconds"]                          # {'keys': …, 'values': …, 'solve': …}

    Nothing is written to the model here.
    """
    hp = params or RomeParams()
    stats.check(model)
    t0 = time.perf_counter()
    templates = context_templates(model, hp.n_templates, hp.template_length)
    k_star = subject_keys(model, layer, [request], templates)[0]                      # [d_mlp]
    k = k_star if hp.rrome else subject_keys(model, layer, [request], ["{}"])[0]
    t1 = time.perf_counter()
    delta, v0, vinfo = optimise_values(model, [request], layer, "mlp_out", templates, hp.values, progress)
    t2 = time.perf_counter()
    w = model.mlp_out_weight(layer)
    W = w.matrix.double()                                                              # [d_model, d_mlp]
    b = torch.zeros(W.shape[0], dtype=W.dtype) if w.bias is None else w.bias.double()
    v_star = (v0[0] + delta[0]).double()
    u = solve(stats.moment, k_star, what=f"C (layer {layer})")                         # C⁻¹k*
    k = k.double()
    denom = u @ k
    if not torch.isfinite(denom) or abs(float(denom)) < 1e-12:
        raise ValueError(f"uᵀk = {float(denom):.3g} at layer {layer}: the key is (nearly) orthogonal to C⁻¹k*; "
                         "recompute the statistics over more tokens or choose another layer")
    update = torch.outer(v_star - W @ k - b, u) / denom                                # (v* − Wk − b) uᵀ / (uᵀk)
    t3 = time.perf_counter()
    info = {"seconds": {"keys": t1 - t0, "values": t2 - t1, "solve": t3 - t2},
            "loss": vinfo["loss"][0], "nll": vinfo["nll"][0], "steps": vinfo["steps"][0],
            "delta_norm": float(delta.norm()), "v0_norm": float(v0.norm())}
    return update.float(), info
