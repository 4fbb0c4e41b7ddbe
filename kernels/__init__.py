"""Kernels for the hot loops of tracing and editing: Triton on CUDA tensors, torch on the CPU.

    >>> import torch
    >>> from tracelab import kernels
    >>> C = torch.zeros(4, 4)
    >>> kernels.accumulate_second_moment(C, torch.randn(16, 4))     # C += XᵀX; rows added
    16

- ``accumulate_second_moment`` / ``SecondMoment``: C += XᵀX over masked rows (the key statistics
  of ROME/MEMIT/AlphaEdit), as a symmetric rank-k update.
- ``restore_``: the patch step of batched causal tracing — clean states into each restored run's
  slots, corruption noise at the subject positions — in one pass.
- ``shared_prefix_attention``: attention for rows that share one prefix (cascade style).

Every function takes ``backend="auto" | "torch" | "triton"``; "auto" follows the device and the
``TRACELAB_FORCE_TRITON`` switch (see ``tracelab.kernels.dispatch``). Importing this package
never imports Triton: the kernels are built at the first Triton call.
"""

from .dispatch import resolve_backend, triton_problem
from .prefix_attention import shared_prefix_attention
from .restore import restore_
from .second_moment import SecondMoment, accumulate_second_moment

__all__ = ["SecondMoment", "accumulate_second_moment", "resolve_backend", "restore_",
           "shared_prefix_attention", "triton_problem"]
