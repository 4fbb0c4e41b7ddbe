"""AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge (Fang et al. 2025).

    >>> deltas, keys, info = alphaedit_deltas(model, requests, [3, 4, 5], key_stats(model, [3, 4, 5]),
    ...                                       past_keys={3: K3_old, ...})

P projects onto the span of C's small eigenvectors (directions the preserved keys K₀ hardly use:
eigenvalue < `threshold`·largest), so ΔW P K₀ ≈ 0 and what the model knew stays put. With the
keys of past AlphaEdit edits K_p (from the journal; they accumulate over a sequence of edits):

    ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹         (AlphaEdit eq. 11)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..models import Model
from .delta import WeightDelta
from .memit import MemitParams, Solver, spread_update
from .requests import Request
from .stats import KeyStats
from .values import ValueParams


@dataclass
class AlphaEditParams(MemitParams):
    """AlphaEdit's hyperparameters: MEMIT's, plus the null-space `threshold` (relative to C's
    largest eigenvalue) and the ridge `alpha`.

        >>> AlphaEditParams(threshold=2e-2, alpha=10.0)
    """

    values: ValueParams = field(default_factory=lambda: ValueParams(clamp_norm=0.75))
    threshold: float = 1e-2
    alpha: float = 10.0


def null_space_projector(C: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P = U Uᵀ over the eigenvectors of C with eigenvalue < threshold·λ_max: `([d, d] float64, rank)`.

        >>> P, rank = null_space_projector(torch.diag(torch.tensor([1.0, 1e-6])), 1e-3)
        >>> rank
        1
    """
    eig, U = torch.linalg.eigh(C.double())
    small = eig < threshold * eig[-1]
    U = U[:, small]
    return U @ U.T, int(small.sum())


def alphaedit_solver(stats: dict[int, KeyStats], past_keys: dict[int, torch.Tensor], threshold: float,
                     alpha: float, ranks: dict[int, int]) -> Solver:
    projectors: dict[int, torch.Tensor] = {}

    def solver(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        if layer not in projectors:
            projectors[layer], ranks[layer] = null_space_projector(stats[layer].moment, threshold)
            if ranks[layer] == 0:
                raise ValueError(f"the null space of C at layer {layer} is empty at threshold {threshold}: "
                                 "raise `threshold` (AlphaEditParams) so some directions are free to edit")
        P = projectors[layer].to(K.device)
        Kp = past_keys.get(layer)
        past = torch.zeros_like(P) if Kp is None else Kp.T.double().to(K.device) @ Kp.double().to(K.device)
        A = P @ (past + K @ K.T) + alpha * torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
        # ΔWᵀ = A⁻¹ P K Rᵀ  →  ΔW = R Kᵀ P A⁻ᵀ
        return torch.linalg.solve(A, P @ K @ R.T).T
    return solver


def alphaedit_deltas(model: Model, requests: Sequence[Request], layers: Sequence[int], stats: dict[int, KeyStats],
                     past_keys: dict[int, torch.Tensor] | None = None, params: AlphaEditParams | None = None,
                     applied: list[WeightDelta] | None = None, progress: bool = True):
    """Apply AlphaEdit for `requests` over `layers`; returns `(applied deltas, keys, info)`.
    `past_keys {layer: [n_past, d_mlp]}`: keys of earlier edits to protect (see `journal`)."""
    hp = params or AlphaEditParams()
    for l in layers:
        stats[l].check(model)
    applied = [] if applied is None else applied
    ranks: dict[int, int] = {}
    solver = alphaedit_solver(stats, past_keys or {}, hp.threshold, hp.alpha, ranks)
    keys, info = spread_update(model, requests, layers, solver, hp, applied, progress)
    info["null_space_dim"] = ranks
    return applied, keys, info
