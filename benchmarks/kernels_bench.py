"""Benchmark tracelab.kernels on a GPU: Triton kernels against the torch path and the device's limits.

    python benchmarks/kernels_bench.py        # prints a table, writes benchmarks/results/kernels.json

Measures the device first — copy bandwidth (a 1 GiB device-to-device copy) and matmul rate (bf16
and float32 GEMMs) — then times each kernel with ``triton.testing.do_bench`` on both backends, as
achieved GB/s (memory-bound: restore) or TFLOP/s (second moments, attention) and as a fraction of
the device's measured rate. Needs an NVIDIA GPU; anywhere else it says so and exits 0.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "kernels.json"


def device_limits(bench) -> dict:
    """Measured copy bandwidth (GB/s) and matmul rates (TFLOP/s) of the current GPU."""
    src = torch.empty(2**29, dtype=torch.float16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * src.element_size() / bench(lambda: dst.copy_(src)) / 1e9
    limits = {"copy_GB/s": copy_gbs}
    for dtype, n in ((torch.bfloat16, 8192), (torch.float32, 4096)):
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        limits[f"matmul_{_name(dtype)}_TFLOP/s"] = 2 * n**3 / bench(lambda: a @ b) / 1e12
    return limits


def second_moment_cases(bench, limits: dict) -> list[dict]:
    from tracelab.kernels import accumulate_second_moment

    rows = []
    for dtype, n, d in ((torch.bfloat16, 8192, 4096), (torch.float32, 8192, 4096)):
        X = torch.randn(n, d, device="cuda", dtype=dtype)
        mask = torch.rand(n, device="cuda") < 0.9
        C = torch.zeros(d, d, device="cuda")
        flops = 2 * n * d * d  # as a full GEMM counts them; the kernel computes about half
        peak = limits[f"matmul_{_name(dtype)}_TFLOP/s"]
        for backend in ("triton", "torch"):
            s = bench(lambda: accumulate_second_moment(C, X, mask, backend=backend))
            rows.append(_row("second_moment", f"X [{n}, {d}] {_name(dtype)}, 90% rows", backend, s,
                             tflops=flops / s / 1e12, of_peak=flops / s / 1e12 / peak))
    return rows


def restore_cases(bench, limits: dict) -> list[dict]:
    from tracelab.kernels import restore_

    B, T, D, S, n = 512, 64, 4096, 4, 4
    dtype = torch.bfloat16
    hidden = torch.randn(B, T, D, device="cuda", dtype=dtype)
    clean = torch.randn(S, T, D, device="cuda", dtype=dtype)
    source = torch.randint(0, S, (B, T), device="cuda")
    source[torch.rand(B, T, device="cuda") < 0.75] = -1  # a quarter of the positions restored
    subject = torch.arange(n, device="cuda")
    noise = torch.randn(B, n, D, device="cuda")
    restored = int((source >= 0).sum())
    noised = B * n - int((source[:, :n] >= 0).sum())
    size = hidden.element_size()
    moved = restored * D * 2 * size + noised * D * (2 * size + 4) + source.numel() * 8  # read + write
    rows = []
    for backend in ("triton", "torch"):
        s = bench(lambda: restore_(hidden, clean, source, noise=noise, subject=subject, backend=backend))
        rows.append(_row("restore", f"[{B}, {T}, {D}] bf16, {restored} restored, {noised} noised",
                         backend, s, gbs=moved / s / 1e9, of_peak=moved / s / 1e9 / limits["copy_GB/s"]))
    return rows


def attention_cases(bench, limits: dict) -> list[dict]:
    import torch.nn.functional as F

    from tracelab.kernels import shared_prefix_attention

    B, H, Hkv, P, Tq, Dh = 128, 32, 8, 512, 16, 128
    dtype = torch.bfloat16
    q = torch.randn(B, H, Tq, Dh, device="cuda", dtype=dtype)
    kp, vp = (torch.randn(Hkv, P, Dh, device="cuda", dtype=dtype) for _ in range(2))
    ks, vs = (torch.randn(B, Hkv, Tq, Dh, device="cuda", dtype=dtype) for _ in range(2))
    flops = 4 * B * H * Tq * (P + (Tq + 1) / 2) * Dh  # q·kᵀ and p·v over the keys each query sees
    peak = limits["matmul_bf16_TFLOP/s"]
    shape = f"B={B} H={H} Hkv={Hkv} P={P} Tq={Tq} Dh={Dh} bf16"
    rows = []
    for backend in ("triton", "torch"):
        s = bench(lambda: shared_prefix_attention(q, kp, vp, ks, vs, backend=backend))
        rows.append(_row("prefix_attention", shape, backend, s, tflops=flops / s / 1e12,
                         of_peak=flops / s / 1e12 / peak))

    def sdpa():  # the baseline: the prefix repeated for every row, one fused attention call
        k = torch.cat([kp.expand(B, -1, -1, -1), ks], 2).repeat_interleave(H // Hkv, 1)
        v = torch.cat([vp.expand(B, -1, -1, -1), vs], 2).repeat_interleave(H // Hkv, 1)
        mask = torch.ones(Tq, P + Tq, dtype=torch.bool, device="cuda").tril(diagonal=P)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    s = bench(sdpa)
    rows.append(_row("prefix_attention", shape, "sdpa, repeated prefix", s, tflops=flops / s / 1e12,
                     of_peak=flops / s / 1e12 / peak))
    return rows


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def _row(kernel: str, shape: str, backend: str, seconds: float, **rates: float) -> dict:
    return {"kernel": kernel, "shape": shape, "backend": backend, "ms": seconds * 1e3, **rates}


def _print(limits: dict, rows: list[dict]) -> None:
    print(f"device: {torch.cuda.get_device_name()}  " + "  ".join(f"{k} {v:.1f}" for k, v in limits.items()))
    print(f"{'kernel':<17} {'backend':<22} {'ms':>9} {'rate':>14} {'of device':>9}  shape")
    for r in rows:
        rate = f"{r['gbs']:.0f} GB/s" if "gbs" in r else f"{r['tflops']:.1f} TFLOP/s"
        print(f"{r['kernel']:<17} {r['backend']:<22} {r['ms']:>9.3f} {rate:>14} {r['of_peak']:>8.0%}  {r['shape']}")


def main() -> int:
    if not torch.cuda.is_available():
        print("kernels_bench: needs an NVIDIA GPU (CUDA); none here, so nothing was measured.")
        return 0
    import triton
    from triton.testing import do_bench

    from tracelab.kernels import triton_problem

    if triton_problem("cuda") is not None:
        print(f"kernels_bench: a GPU is here but the Triton kernels cannot run: {triton_problem('cuda')}")
        return 1

    def bench(fn) -> float:  # seconds, median of do_bench's repetitions
        return do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3

    limits = device_limits(bench)
    rows = second_moment_cases(bench, limits) + restore_cases(bench, limits) + attention_cases(bench, limits)
    _print(limits, rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version()}
    RESULTS.write_text(json.dumps({"meta": meta, "limits": limits, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
