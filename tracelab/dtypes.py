"""Dtype names, one table for every place that reads or writes them.

    >>> parse_dtype("bf16"), dtype_name(torch.bfloat16)      # (torch.bfloat16, 'bfloat16')
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a name in `DTYPES` or a torch dtype (None stays None); ValueError otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → "bfloat16"."""
    return str(dtype).removeprefix("torch.")
