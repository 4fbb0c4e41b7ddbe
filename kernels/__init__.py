"""Kernels for the hot loops of tracing and editing: Triton on CUDA tensors, torch on the CPU.

    >>> import torch
    >>> from tracelab import kernels
    >>> C = torch.zeros(4, 4)
    >>> kernels.accumulate_second_moment(C, torch.randn(16, 4))     # C += XᵀX; rows added
    16

Which library path calls each, and what is still waiting for a GPU measurement:

- ``accumulate_second_moment``: C += XᵀX over masked rows, a symmetric rank-k update. Called by
  ``editing/toolkit/stats.py`` for every batch of key statistics (ROME/MEMIT/AlphaEdit's C).
  ``SecondMoment`` (a running-sum object around it) is called by no library path; it is the
  streaming entry point for users and the GPU benchmark.
- ``restore_``: the patch step of batched causal tracing. Its clean-state branch is called by
  ``tracing/fast.py`` (rows entering the walk) and ``tracing/llama_layer.py`` (restored sublayer
  outputs). Its noise branch (corruption noise at the subject positions in the same pass) is
  called by no library path: on the CPU the corrupted run adds its noise once, through the
  ``embed`` site; the branch is the GPU path for building many corrupted rows at once.
- ``shared_prefix_attention``: attention for rows that share one prefix (cascade style). Called
  by no library path on the CPU, where the written-out Llama layer attends over ~10 keys with
  one matmul; it is the GPU path for long shared prefixes.

All three are tested here against float64 references under Triton's interpreter
(``TRITON_INTERPRET=1``); none has been compiled or timed on a GPU (``benchmarks/kernels_bench.py``
exits 0 without one), so whether the GPU paths should replace the torch ones waits for that
measurement.

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
