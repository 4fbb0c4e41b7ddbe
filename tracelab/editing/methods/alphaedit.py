"""AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge (Fang et al. 2025).

    >>> changes, info = alphaedit_deltas(model, requests, [3, 4, 5], key_stats(model, [3, 4, 5]),
    ...                                  past_keys={3: K3_old, ...})

P projects onto the span of C's small eigenvectors (directions the preserved keys K₀ hardly use),
so ΔW P K₀ ≈ 0 and what the model knew stays put. With the keys of past AlphaEdit edits K_p
(from the journal; they accumulate over a sequence of edits):

    ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹         (AlphaEdit eq. 11)

Which directions are "small": the paper thresholds C's eigenvalues. On SmolLM2 the spectrum of
E[kkᵀ] is flat (at layers 3–6 no eigenvalue is below 10⁻³ of the largest, and the ones below
10⁻² carry 6–23 % of the keys' energy), so a threshold either empties the null space or lets
edits reach a fifth of every key. The default therefore takes the smallest eigen-directions
that together hold at most `null_energy` (5 %) of C's trace: preserved keys keep ≥ 95 % of their
energy out of the edit's reach, whatever the model's scale. `threshold=` (relative to the
largest eigenvalue) gives the paper's rule.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ...models import Model
from ..changes import Change, ParamDelta
from ..transaction import Transaction
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.stats import KeyStats, check_stats
from ..toolkit.values import ValueParams
from .memit import MemitParams, Solver, spread_update


@dataclass
class AlphaEditParams(MemitParams):
    """AlphaEdit's hyperparameters: MEMIT's, plus the null space (`null_energy`: the largest
    share of C's trace it may hold; or the paper's `threshold` on eigenvalues relative to the
    largest, which then takes precedence) and the ridge `alpha`.

        >>> AlphaEditParams(null_energy=0.02, alpha=10.0)
        >>> AlphaEditParams(threshold=1e-2)              # the paper's rule
    """

    values: ValueParams = field(default_factory=lambda: ValueParams(clamp_norm=0.75))
    null_energy: float = 0.05
    threshold: float | None = None
    alpha: float = 10.0


def null_space_projector(C: torch.Tensor, null_energy: float | None = None,
                         threshold: float | None = None) -> tuple[torch.Tensor, int]:
    """P = U Uᵀ over C's smallest eigenvectors: those whose eigenvalues sum to at most
    `null_energy`·trace(C), or (if given) those with eigenvalue < `threshold`·λ_max.
    Returns `([d, d] float64, rank)`.

        >>> C = torch.diag(torch.tensor([1.0, 1e-6]))
        >>> null_space_projector(C, null_energy=0.01)[1], null_space_projector(C, threshold=1e-3)[1]
        (1, 1)
    """
    if (null_energy is None) == (threshold is None):
        raise ValueError("give exactly one of null_energy (a share of C's trace) and threshold (relative eigenvalue)")
    eig, U = torch.linalg.eigh(C.double())  # ascending
    if threshold is not None:
        small = eig < threshold * eig[-1]
    else:
        small = torch.cumsum(eig.clamp(min=0), 0) <= null_energy * eig.clamp(min=0).sum()
    U = U[:, small]
    return U @ U.T, int(small.sum())


_PROJECTORS: OrderedDict[tuple, tuple[torch.Tensor, int]] = OrderedDict()  # the last few layers' (P, rank)


def cached_projector(stats: KeyStats, null_energy: float | None, threshold: float | None) -> tuple[torch.Tensor, int]:
    """`null_space_projector` of `stats.moment`, computed once per statistics and rule: keyed by their
    provenance and a checksum of C, since `tl.edit` reads the statistics from their cache anew for every
    edit (five eigendecompositions of d_mlp × d_mlp matrices cost 3.4 s of every edit of a stream)."""
    C = stats.moment
    key = (json.dumps(stats.provenance, sort_keys=True, default=str), stats.layer, stats.count,
           float(C.double().sum()), float(C.diagonal().double().sum()), null_energy, threshold)
    if key in _PROJECTORS:
        _PROJECTORS.move_to_end(key)
    else:
        _PROJECTORS[key] = null_space_projector(C, null_energy, threshold)
        while len(_PROJECTORS) > 8:  # 8 layers of float64 [d_mlp, d_mlp]: ~150 MB at d_mlp 1536
            _PROJECTORS.popitem(last=False)
    return _PROJECTORS[key]


def alphaedit_solver(stats: dict[int, KeyStats], past_keys: dict[int, torch.Tensor], null_energy: float | None,
                     threshold: float | None, alpha: float, ranks: dict[int, int]) -> Solver:
    projectors: dict[int, torch.Tensor] = {}

    def solver(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        if layer not in projectors:
            projectors[layer], ranks[layer] = cached_projector(stats[layer], null_energy, threshold)
            if ranks[layer] == 0:
                rule = f"threshold {threshold}" if threshold is not None else f"null_energy {null_energy}"
                raise ValueError(f"the null space of C at layer {layer} is empty at {rule}: raise it "
                                 "(AlphaEditParams) so some directions are free to edit")
        P = projectors[layer].to(K.device)
        Kp = past_keys.get(layer)
        past = torch.zeros_like(P) if Kp is None else Kp.T.double().to(K.device) @ Kp.double().to(K.device)
        A = P @ (past + K @ K.T) + alpha * torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
        # ΔWᵀ = A⁻¹ P K Rᵀ  →  ΔW = R Kᵀ P A⁻ᵀ
        return torch.linalg.solve(A, P @ K @ R.T).T
    return solver


def alphaedit_deltas(model: Model, requests: Sequence[Request], layers: Sequence[int], stats: dict[int, KeyStats],
                     past_keys: dict[int, torch.Tensor] | None = None, params: AlphaEditParams | None = None,
                     tx: Transaction | None = None, progress: bool = True) -> tuple[list[ParamDelta], dict]:
    """AlphaEdit for `requests` over `layers`, applied through `tx`; returns `(changes, info)`.
    `past_keys {layer: [n_past, d_mlp]}`: keys of earlier edits to protect (see `Journal.state`)."""
    hp = params or AlphaEditParams()
    check_stats(model, stats, layers)
    ranks: dict[int, int] = {}
    null_energy = None if hp.threshold is not None else hp.null_energy
    solver = alphaedit_solver(stats, past_keys or {}, null_energy, hp.threshold, hp.alpha, ranks)
    changes, info = spread_update(model, requests, layers, solver, hp, tx or Transaction(model), progress)
    info["null_space_dim"] = ranks
    return changes, info


@register
class AlphaEdit(Method):
    """AlphaEdit as a registered method: MEMIT's layer loop, projected; each change keeps its
    keys (`state["keys"]`), which later AlphaEdit edits in the journal preserve."""

    name, title, family, Params = "alphaedit", "AlphaEdit", "locate-then-edit", AlphaEditParams
    batch, needs, layers = True, ("stats",), "range"

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: AlphaEditParams,
              ctx: Context) -> list[Change]:
        past = ctx.journal.state(self.name, "keys")
        changes, info = alphaedit_deltas(model, requests, layers, ctx.stats, past, params, ctx.tx, ctx.progress)
        ctx.info.update(info)
        return changes
