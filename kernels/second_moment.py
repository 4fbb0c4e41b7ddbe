"""Second moments of activations, C += XᵀX, for the key statistics of ROME/MEMIT/AlphaEdit.

    >>> import torch
    >>> from tracelab.kernels import SecondMoment
    >>> sm = SecondMoment(4)
    >>> sm.add(torch.randn(10, 4)).add(torch.randn(6, 4), mask=torch.arange(6) < 3).count
    13
    >>> sm.finalize().shape                              # E[k kᵀ] over the 13 rows
    torch.Size([4, 4])

The Triton kernel is a symmetric rank-k update: it computes only the tiles of C on and above the
diagonal, each from one pass over the rows of X with fp32 accumulation, and mirrors each tile
into its transpose as it stores it. C stays exactly symmetric (bit for bit) if it starts so, on
either backend.
"""

from __future__ import annotations

import torch

from .checks import FLOATS, check_shape, check_tensor
from .dispatch import Backend, kernels, resolve_backend


def accumulate_second_moment(C: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None = None, *,
                             backend: Backend = "auto") -> int:
    """Add XᵀX over the rows of X where ``mask`` is True into C, in place; return the rows added.

        >>> C = torch.zeros(3, 3)
        >>> accumulate_second_moment(C, torch.ones(5, 3), mask=torch.tensor([1, 1, 0, 0, 1]).bool())
        3
        >>> C[0, 0].item()
        3.0

    Shapes: C [d, d] float32 (float64 runs on the torch path); X [n, d] float16/bfloat16/float32
    (flatten batch and position first: ``X.reshape(-1, d)``); mask [n] bool or None (all rows).
    The products accumulate in C's dtype. Counting masked rows reads the mask back to the host
    (one sync on a GPU); with ``mask=None`` nothing is synchronised.
    """
    check_tensor("C", C, ndim=(2,), dtypes=(torch.float32, torch.float64), shape="[d, d]")
    check_tensor("X", X, ndim=(2,), dtypes=FLOATS, shape="[n, d]", device=C.device)
    n, d = X.shape
    check_shape("C", C, (d, d), "[d, d] with d = X.shape[1]")
    if mask is not None:
        check_tensor("mask", mask, ndim=(1,), dtypes=(torch.bool,), shape="[n]", device=C.device)
        check_shape("mask", mask, (n,), "[n] with n = X.shape[0]")
    # float64 sums take the torch path whatever the switch says; only an explicit request is refused
    which = resolve_backend("torch" if C.dtype == torch.float64 and backend == "auto" else backend, X)
    if which == "triton" and C.dtype != torch.float32:
        raise TypeError("the Triton kernel accumulates into a float32 C; got a float64 C. Pass a "
                        "float32 C, or backend='auto' to accumulate float64 on the torch path")
    if n == 0 or d == 0:
        pass
    elif which == "triton":
        kernels().second_moment_(C, X, mask)
    else:  # C += Xmᵀ Xm; BLAS need not round G[i, j] and G[j, i] alike, so keep G's upper half
        Xm = (X if mask is None else X[mask]).to(C.dtype)  # [rows kept, d]
        G = (Xm.T @ Xm).triu_()  # [d, d]
        C += G
        C += G.fill_diagonal_(0).mT  # and mirror it
    return n if mask is None else int(mask.sum())


class SecondMoment:
    """A running E[x xᵀ]: a float32 (or float64) sum C [d, d] and the number of rows in it.

        >>> sm = SecondMoment(2)
        >>> sm.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]])).finalize()
        tensor([[ 5.,  7.],
                [ 7., 10.]])

    ``add(X [n, d], mask [n] | None)`` accumulates (see ``accumulate_second_moment``) and returns
    self; ``finalize()`` returns C / count, a new [d, d] tensor.
    """

    def __init__(self, d: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 backend: Backend = "auto") -> None:
        self.C = torch.zeros(d, d, device=device, dtype=dtype)
        self.count = 0
        self.backend = backend

    def add(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> SecondMoment:
        self.count += accumulate_second_moment(self.C, X, mask, backend=self.backend)
        return self

    def finalize(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("SecondMoment.finalize() needs at least one row; add(X) was given none "
                             "(empty X, or a mask that is all False)")
        return self.C / self.count

    def __repr__(self) -> str:
        return f"SecondMoment(d={self.C.shape[0]}, count={self.count}, dtype={self.C.dtype})"
