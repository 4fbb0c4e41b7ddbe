"""MEMIT: many edits at once, spread over a range of layers (Meng et al. 2023).

    >>> changes, info = memit_deltas(model, requests, layers=[3, 4, 5], stats=key_stats(model, [3, 4, 5]))

z_i = h_L + δ_i is the residual at the last layer L that makes request i's target likely (see
`values`). Then for each layer l in order, with K the requests' keys at l `[d_mlp, n]` and
R = (z − h_L) / (number of layers left) `[d_model, n]` (the residual still missing, spread):

    ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹             (MEMIT eq. 14, solved in float64)

Each ΔW_l is applied (through the edit's transaction) before the keys of the next layer are
computed (they depend on it), so a failure part-way changes no weight.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from ...models import Model
from ..changes import Change, ParamDelta
from ..transaction import Transaction
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.keys import context_templates, subject_keys, subject_values
from ..toolkit.linalg import solve
from ..toolkit.stats import KeyStats, check_stats
from ..toolkit.values import ValueParams, optimise_values

Solver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (layer, K [d_mlp, n], R [d_model, n]) → ΔW


@dataclass
class MemitParams:
    """MEMIT's hyperparameters (λ = `mom2_weight`; z optimisation in `values`).

        >>> MemitParams(mom2_weight=3000, values=ValueParams(clamp_norm=0.75))
    """

    values: ValueParams = field(default_factory=lambda: ValueParams(clamp_norm=0.75))
    mom2_weight: float = 3000.0  # the papers used 15000–20000 on GPT-J/GPT-2 XL; too damped for SmolLM2 (edit_bench)
    n_templates: int = 5
    template_length: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def spread_update(model: Model, requests: Sequence[Request], layers: Sequence[int], solver: Solver,
                  params: MemitParams, tx: Transaction, progress: bool = True) -> tuple[list[ParamDelta], dict]:
    """The layer loop shared by MEMIT and AlphaEdit: optimise z at the last layer, then for each
    layer compute K and R, and apply ΔW_l = `solver(l, K, R)` through the transaction `tx` (the
    next layer's keys depend on it). Each change keeps its layer's keys as `state["keys"]`
    `[n, d_mlp]`. Returns `(changes, info)`."""
    t0 = time.perf_counter()
    templates = context_templates(model, params.n_templates, params.template_length)
    last = layers[-1]
    delta, h0, vinfo = optimise_values(model, requests, last, "resid", templates, params.values, progress)
    z = h0 + delta                                                                   # [n, d_model]
    t1 = time.perf_counter()
    seconds = {"values": t1 - t0, "keys": 0.0, "solve": 0.0}
    changes = []
    for i, l in enumerate(layers):
        t = time.perf_counter()
        K = subject_keys(model, l, requests, templates)                              # [n, d_mlp]
        h = subject_values(model, model.resid(last), requests, ["{}"])[:, 0]          # current h_L [n, d_model]
        seconds["keys"] += time.perf_counter() - t
        t = time.perf_counter()
        R = (z - h) / (len(layers) - i)                                              # spread the residual
        update = solver(l, K.T.double(), R.T.double())
        changes.append(tx.apply(ParamDelta.mlp_out(model, l, update.float(), state={"keys": K})))
        seconds["solve"] += time.perf_counter() - t
    info = {"seconds": seconds, "loss": vinfo["loss"], "nll": vinfo["nll"], "steps": vinfo["steps"],
            "delta_norm": float(delta.norm(dim=-1).mean()), "v0_norm": float(h0.norm(dim=-1).mean())}
    return changes, info


def memit_solver(stats: dict[int, KeyStats], mom2_weight: float) -> Solver:
    """ΔW = R Kᵀ (λC + KKᵀ)⁻¹ (A symmetric: ΔW = (A⁻¹K Rᵀ)ᵀ)."""
    def solver(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        A = mom2_weight * stats[layer].moment.double().to(K.device) + K @ K.T
        return R @ solve(A, K, what=f"λC + KKᵀ (layer {layer})").T
    return solver


def memit_deltas(model: Model, requests: Sequence[Request], layers: Sequence[int], stats: dict[int, KeyStats],
                 params: MemitParams | None = None, tx: Transaction | None = None,
                 progress: bool = True) -> tuple[list[ParamDelta], dict]:
    """MEMIT for `requests` over `layers`, applied through `tx`; returns `(changes, info)`.

        >>> with transaction(model) as tx:
        ...     memit_deltas(model, reqs, [3, 4, 5], key_stats(model, [3, 4, 5]), tx=tx)
    """
    hp = params or MemitParams()
    check_stats(model, stats, layers)
    return spread_update(model, requests, layers, memit_solver(stats, hp.mom2_weight), hp,
                         tx or Transaction(model), progress)


@register
class Memit(Method):
    """MEMIT as a registered method: many requests over a layer range, a `ParamDelta` per layer."""

    name, title, family, Params = "memit", "MEMIT", "locate-then-edit", MemitParams
    batch, needs, layers = True, ("stats",), "range"

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: MemitParams,
              ctx: Context) -> list[Change]:
        changes, info = memit_deltas(model, requests, layers, ctx.stats, params, ctx.tx, ctx.progress)
        ctx.info.update(info)
        return changes
