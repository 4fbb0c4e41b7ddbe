"""Dtype names, one table for every place that reads or writes them, and where bfloat16 is fast.

    >>> parse_dtype("bf16"), dtype_name(torch.bfloat16)      # (torch.bfloat16, 'bfloat16')
    >>> auto_dtype(model)                                    # torch.bfloat16 on an AVX-512 BF16 CPU, None on AVX2

bfloat16 autocast is the fast setting only where the device multiplies bfloat16 natively. A CPU
without AVX-512 BF16 or AMX emulates it: on an AVX2-only AMD EPYC a bf16 matmul of the model's
shapes ran at 1.4 GFLOP/s against 161 in float32 (`benchmarks/autocast_bench.py`), so every "auto"
and every `bf16=True` of an optimisation stays in float32 there.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


AUTO = "auto"  # bfloat16 autocast where the device multiplies it natively, else the model's own dtype


def fast_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, a CPU with AMX or
    AVX-512 BF16 (torch's own CPU checks). Anything else (an AVX2 CPU, MPS) counts as slow."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(check() for check in checks if check is not None)
    return False


def auto_dtype(model) -> torch.dtype | None:
    """What "auto" autocasts a model to: bfloat16 for a float32 model on a device with `fast_bf16`,
    else None (the model computes in its own dtype)."""
    return torch.bfloat16 if model.dtype == torch.float32 and fast_bf16(model.device) else None


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
