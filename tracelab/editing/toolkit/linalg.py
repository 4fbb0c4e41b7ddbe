"""Float64 solves with the statistics, regularised (with a warning) when C is singular.

    >>> x = solve(C, k)                  # C⁻¹k, in float64
"""

from __future__ import annotations

import warnings

import torch


def solve(A: torch.Tensor, B: torch.Tensor, *, what: str = "C", rcond: float = 1e-10) -> torch.Tensor:
    """A⁻¹B in float64 (`A [d, d]` symmetric PSD, `B [d]` or `[d, n]`).

        >>> solve(torch.eye(3), torch.ones(3))
        tensor([1., 1., 1.], dtype=torch.float64)

    A Cholesky factorisation solves it. If A is singular or nearly so (the factorisation fails,
    or its pivots say cond(A) > 1/rcond, e.g. statistics over fewer tokens than d), ε·I is added
    with ε = 10⁴·rcond·mean(diag A) and a warning says so.
    """
    A, B = A.double(), B.double().to(A.device)
    if not torch.isfinite(A).all():
        raise ValueError(f"{what} has NaN/inf entries; recompute the statistics")
    L, info = torch.linalg.cholesky_ex(A)
    pivots = L.diagonal() ** 2
    if info != 0 or pivots.min() <= rcond * pivots.max():
        eps = float(A.diagonal().mean().clamp(min=1e-12)) * rcond * 1e4
        warnings.warn(f"{what} is singular or nearly so ({A.shape[0]}×{A.shape[0]}): regularised with "
                      f"{eps:.2e}·I. Compute the statistics over more tokens (key_stats(..., tokens=N)) to avoid this",
                      stacklevel=3)
        L = torch.linalg.cholesky(A + eps * torch.eye(A.shape[0], dtype=A.dtype, device=A.device))
    return torch.cholesky_solve(B if B.dim() == 2 else B[:, None], L).reshape(B.shape)
