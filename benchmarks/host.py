"""What every benchmark records beside its timings: the CPU, its bf16 instructions, and the
matmul rate of the model's own layer shapes in a dtype (the hosts differ: see DESIGN.md).

    >>> from host import cpu_description, matmul_rate      # run from benchmarks/
    >>> cpu_description()                                  # {"cpu": "AMD EPYC", "bf16_matmul_isa": "avx512_bf16"}
    >>> matmul_rate(model, torch.bfloat16) / 1e9           # GFLOP/s
"""

from __future__ import annotations

import platform
import time

import torch
from torch import nn

from tracelab.dtypes import fast_bf16
from tracelab.heap import reuse_heap


def cpu_description() -> dict:
    """The CPU's model name and its bf16 matmul instructions (Linux /proc/cpuinfo; else unknown)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"
    return {"cpu": name, "bf16_matmul_isa": isa}


def layer_linears(model) -> list[nn.Linear]:
    return [m for m in model.layer(0).modules() if isinstance(m, nn.Linear)]


def matmul_rate(model, dtype: torch.dtype, rows: int = 4096, reps: int = 3) -> float:
    """FLOP/s of the model's own layer matmuls on `[rows, in]` inputs in `dtype` (best of `reps`)."""
    shapes = [(m.in_features, m.out_features) for m in layer_linears(model)]
    xs = [torch.randn(rows, k, dtype=dtype) for k, _ in shapes]
    ws = [torch.randn(k, n, dtype=dtype) for k, n in shapes]
    flops = sum(2 * rows * k * n for k, n in shapes)
    best = float("inf")
    with reuse_heap():
        for _ in range(reps + 1):
            t = time.perf_counter()
            for x, w in zip(xs, ws):
                x @ w
            best = min(best, time.perf_counter() - t)
    return flops / best


def host_record(model) -> dict:
    """CPU, threads, whether "auto" picks bf16 here, and the fp32/bf16 matmul rates (GFLOP/s) of
    `model`'s layer shapes, right now."""
    return {**cpu_description(), "auto_bf16": fast_bf16("cpu"), "threads": torch.get_num_threads(),
            "matmul_gflops": {str(d)[6:]: matmul_rate(model, d) / 1e9 for d in (torch.float32, torch.bfloat16)}}
