"""ROME: a rank-one update of one MLP output weight (Meng et al. 2022), r-ROME keys by default.

    >>> delta, info = rome_delta(model, request, layer=5, stats=key_stats(model, 5))
    >>> delta.shape                                 # [d_model, d_mlp]: W ← W + ΔW

With C = E[k kᵀ] the key statistics, k* the subject's key averaged over context prefixes,
u = C⁻¹k* and v* = v₀ + δ the optimised MLP output (see `values`):

    ΔW = (v* − W k − b) uᵀ / (uᵀ k)          (ROME eq. 2, rank one)

r-ROME (Gupta et al. 2024) takes k = k* on both sides; `rrome=False` reproduces the original,
which uses the key of the plain prompt k = k_prompt there.

v* is optimised on the prompt and its prefixes together, but the rank-one update reaches the plain
prompt through its own key (ΔW k_prompt = (uᵀk_prompt / uᵀk*)·(v* − W k*)), which can fall short:
a subject at the very start of the prompt has a key unlike the prefixed ones (uᵀk_prompt/uᵀk* was
0.02–0.6 for the edits that failed on the embedded model). With `verify=True` (default) the edited
model is asked whether its greedy continuation of the prompt is the target; if not,

2. the update is solved again to reach both keys: the C-smallest rank-one ΔW with ΔW k = ΔW k_prompt
   = v* − W k − b, i.e. ΔW = (v* − W k − b) uᵀ with u = C⁻¹K (KᵀC⁻¹K)⁻¹ 1, K = [k, k_prompt]
   (for K = [k] this is ROME's u = C⁻¹k / (kᵀC⁻¹k));
3. if it still falls short, v* is optimised once more (twice the steps, a 4× stricter stop:
   p(target) ≈ 0.99 instead of 0.95) and solved as in 2.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ...models import Model
from ..changes import Change, ParamDelta
from ..transaction import Transaction
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.keys import context_templates, subject_keys
from ..toolkit.linalg import solve
from ..toolkit.stats import KeyStats
from ..toolkit.values import ValueParams, optimise_values, says_target


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
               progress: bool = True, tx: Transaction | None = None) -> tuple[torch.Tensor, dict]:
    """ΔW `[d_model, d_mlp]` (float32) for one request at `layer`, and info (timings, losses).

        >>> d, info = rome_delta(model, Request("Lyon", "{} is in", "Italy"), 5, key_stats(model, 5))
        >>> info["seconds"], info["rounds"]          # {'keys': …, 'values': …, 'solve': …, 'verify': …}, 1

    The model is left as it was (the check of `verify` applies ΔW as a trial of the transaction
    `tx` and puts the weight back bit for bit).
    """
    hp = params or RomeParams()
    tx = tx or Transaction(model)
    stats.check(model)
    t0 = time.perf_counter()
    templates = context_templates(model, hp.n_templates, hp.template_length)
    k_star = subject_keys(model, layer, [request], templates)[0]                      # [d_mlp]
    k_prompt = subject_keys(model, layer, [request], ["{}"])[0]
    C = stats.moment
    if hp.rrome:
        k, u = k_star, _reaching(C, [k_star], layer)                                   # C⁻¹k* / (k*ᵀC⁻¹k*)
    else:  # the original: u = C⁻¹k* / (k_promptᵀC⁻¹k*)
        k, u = k_prompt, _normalised(solve(C, k_star, what=f"C (layer {layer})"), k_prompt, layer)
    seconds = {"keys": time.perf_counter() - t0, "values": 0.0, "solve": 0.0, "verify": 0.0}
    values, rounds, reaches_prompt = hp.values, 1, False
    delta, v0, vinfo = _optimise(model, request, layer, templates, values, progress, seconds)
    update = _timed(seconds, "solve", _rank_one, model, layer, v0 + delta, u, k)
    if hp.verify and not _timed(seconds, "verify", _edited_says, model, layer, update, request, tx):
        both = _reaching(C, [k, k_prompt], layer, missing_ok=True)                      # None: k ∥ k_prompt
        if both is not None:  # round 2: the same v*, an update that reaches the plain prompt too
            u, rounds, reaches_prompt = both, 2, True
            update = _timed(seconds, "solve", _rank_one, model, layer, v0 + delta, u, k)
        if both is None or not _timed(seconds, "verify", _edited_says, model, layer, update, request, tx):
            values, rounds = replace(values, steps=2 * values.steps, stop_nll=values.stop_nll / 4), 3
            delta, v0, vinfo = _optimise(model, request, layer, templates, values, progress, seconds)
            update = _timed(seconds, "solve", _rank_one, model, layer, v0 + delta, u, k)
    info = {"seconds": seconds, "rounds": rounds, "reaches_prompt_key": reaches_prompt,
            "loss": vinfo["loss"][0], "nll": vinfo["nll"][0], "steps": vinfo["steps"][0],
            "delta_norm": float(delta.norm()), "v0_norm": float(v0.norm())}
    return update.float(), info


def _timed(seconds: dict, what: str, fn, *args):
    t = time.perf_counter()
    try:
        return fn(*args)
    finally:
        seconds[what] += time.perf_counter() - t


def _optimise(model, request, layer, templates, values, progress, seconds):
    """δ `[d_model]`, v₀ `[d_model]` and the optimisation's info for one request (timed as 'values')."""
    delta, v0, info = _timed(seconds, "values", optimise_values, model, [request], layer, "mlp_out", templates,
                             values, progress)
    return delta[0], v0[0], info


def _reaching(C: torch.Tensor, keys: list[torch.Tensor], layer: int, missing_ok: bool = False):
    """u `[d_mlp]` float64 with uᵀk_j = 1 for every key and the smallest C-norm update:
    u = C⁻¹K (KᵀC⁻¹K)⁻¹ 1 with K = [k_1 … k_n]. With `missing_ok`, None when the keys are (nearly)
    parallel in the C⁻¹ metric (one of them already reaches the others)."""
    K = torch.stack([k.double() for k in keys], 1)                                     # [d_mlp, n]
    CiK = solve(C, K, what=f"C (layer {layer})")
    G = K.T.to(CiK.device) @ CiK                                                       # KᵀC⁻¹K [n, n]
    if not torch.isfinite(G).all() or not torch.linalg.cond(G) <= 1e8:  # (cond of a zero G is nan)
        if missing_ok:
            return None
        raise ValueError(f"kᵀC⁻¹k = {G.flatten().tolist()} at layer {layer}: the key is (nearly) zero or not "
                         "finite; recompute the statistics over more tokens or choose another layer")
    return CiK @ torch.linalg.solve(G, torch.ones(len(keys), dtype=G.dtype, device=G.device))


def _normalised(u: torch.Tensor, k: torch.Tensor, layer: int) -> torch.Tensor:
    """u / (uᵀk), so that uᵀk = 1."""
    denom = float(u @ k.double().to(u.device))
    if not abs(denom) > 1e-12:
        raise ValueError(f"uᵀk = {denom:.3g} at layer {layer}: the key is (nearly) orthogonal to C⁻¹k*; "
                         "recompute the statistics over more tokens or choose another layer")
    return u / denom


def _rank_one(model: Model, layer: int, v_star: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ΔW = (v* − W k − b) uᵀ in float64 `[d_model, d_mlp]` (u already normalised: uᵀk = 1)."""
    w = model.mlp_out_weight(layer)
    W = w.matrix.double()                                                              # [d_model, d_mlp]
    b = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if w.bias is None else w.bias.double()
    return torch.outer(v_star.double() - W @ k.double().to(W.device) - b, u.to(W.device))


def _edited_says(model: Model, layer: int, update: torch.Tensor, request: Request, tx: Transaction) -> bool:
    """Whether the model with ΔW applied says the target; the weight is put back bit for bit."""
    with tx.trial(ParamDelta.mlp_out(model, layer, update.float())):
        return says_target(model, request)


@register
class Rome(Method):
    """ROME as a registered method: one request, one layer, a rank-one `ParamDelta`."""

    name, title, family, Params = "rome", "ROME", "locate-then-edit", RomeParams
    needs = ("stats",)

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: RomeParams,
              ctx: Context) -> list[Change]:
        (request,), (layer,) = requests, layers
        update, info = rome_delta(model, request, layer, ctx.stats[layer], params, ctx.progress, ctx.tx)
        ctx.info.update(info)
        return [ParamDelta.mlp_out(model, layer, update)]
