"""Causal tracing speed on the embedded model: fast engine vs the naive reference, and the screen.

    $ OMP_WAIT_POLICY=PASSIVE python benchmarks/trace_bench.py [--samples 10] [--naive-cells 8]

One fact, three kinds, 10 samples, in one process. The naive engine (one forward per cell) is
timed on a random subset of cells per kind and extrapolated (its cells all cost the same). FLOPs
are counted from the shapes each engine must run (matmuls + attention + LM head); the matmul
rate is measured here for each dtype. Prints a table; writes benchmarks/results/trace.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import tracelab
from tracelab.tracing import GaussianNoise
from tracelab.tracing.api import prepare, trace
from tracelab.tracing.fast import plan_rows
from tracelab.tracing.naive import run_naive

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"


def matmul_rate(dtype: torch.dtype, m=2048, k=576, n=1536, reps=20) -> float:
    """Measured FLOP/s of a [m, k] × [k, n] matmul in `dtype` (shapes like the model's MLP)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def model_costs(model) -> dict:
    """FLOPs of one token through one layer's linear maps, attention width, LM head per position."""
    linear = sum(2 * m.in_features * m.out_features for m in model.layer(0).modules() if isinstance(m, nn.Linear))
    cfg = model.hf.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or model.d_model // heads
    vocab = model.hf.get_output_embeddings().weight.shape[0]
    return {"linear": linear, "attn_per_key": 4 * heads * head_dim, "head": 2 * model.d_model * vocab}


def fast_flops(problem, costs, cells) -> float:
    total = 0.0
    for t in range(problem.n_tokens):
        rows = plan_rows(problem, cells, t)
        if not len(rows):
            continue
        q, n = problem.n_tokens - t, problem.n_tokens
        layers = (problem.n_layers - rows.join).sum().item()
        keys = sum(t + i + 1 for i in range(q))  # causal keys per walked query
        total += layers * (q * costs["linear"] + keys * costs["attn_per_key"]) + len(rows) * costs["head"]
    # + the clean and corrupted runs (1 + samples full forwards)
    n = problem.n_tokens
    full = problem.n_layers * (n * costs["linear"] + n * (n + 1) / 2 * costs["attn_per_key"]) + costs["head"]
    return total + (1 + problem.corrupted.samples) * full


def naive_flops(problem, costs, n_cells) -> float:
    n = problem.n_tokens
    per_run = problem.n_layers * (n * costs["linear"] + n * (n + 1) / 2 * costs["attn_per_key"]) + n * costs["head"]
    return n_cells * problem.corrupted.samples * per_run


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().float(), b.flatten().argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--naive-cells", type=int, default=8, help="naive cells timed per kind")
    parser.add_argument("--screen-k", type=int, default=20)
    parser.add_argument("--big-batch", type=int, default=65536, help="a larger max_batch_tokens, timed in bf16")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "trace.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = tracelab.load_model()
    noise = GaussianNoise()
    kw = dict(corruption=noise, samples=args.samples, window=10)
    rates = {"float32": matmul_rate(torch.float32), "bfloat16": matmul_rate(torch.bfloat16)}

    problem = prepare(model, PROMPT, SUBJECT, **kw)
    costs = model_costs(model)
    L, n = problem.n_layers, problem.n_tokens
    all_cells = {k: torch.ones(L, n, dtype=torch.bool) for k in problem.kinds}
    computable = {k: torch.zeros(L, n, dtype=torch.bool) for k in problem.kinds}
    for k in computable:
        computable[k][:, problem.corrupted.first:] = True

    # naive fp32 on a random subset of cells, extrapolated
    gen = torch.Generator().manual_seed(0)
    sample = {}
    for k in problem.kinds:
        mask = torch.zeros(L, n, dtype=torch.bool)
        mask.view(-1)[torch.randperm(L * n, generator=gen)[: args.naive_cells]] = True
        sample[k] = mask
    n_sampled = sum(int(m.sum()) for m in sample.values())
    t = time.perf_counter()
    naive = run_naive(problem, sample, progress=False)
    naive_s = (time.perf_counter() - t) / n_sampled * 3 * L * n

    results = {}
    for dtype, batch in (("float32", None), ("bfloat16", None), ("bfloat16", args.big_batch)):
        t = time.perf_counter()
        r = trace(model, PROMPT, SUBJECT, dtype=dtype, progress=False, max_batch_tokens=batch, **kw)
        results[dtype if batch is None else f"{dtype} batch {batch}"] = (r, time.perf_counter() - t)
    fast32 = results["float32"][0]
    max_diff = max(float((fast32.scores[k][:, sample[k]] - naive[k][:, sample[k]]).abs().max()) for k in problem.kinds)
    bf16_diff = max(float((results["bfloat16"][0].mean(k) - fast32.mean(k)).abs().max()) for k in problem.kinds)

    screen = {}
    for dtype in ("float32", "bfloat16"):
        t = time.perf_counter()
        est = tracelab.attribute(model, PROMPT, SUBJECT, dtype=dtype, progress=False, **kw)
        screen[dtype] = (est, time.perf_counter() - t)
    est = screen["float32"][0]
    rank, recall = {}, {}
    for k in problem.kinds:
        exact_e, est_e = fast32.effect(k)[:, problem.corrupted.first:], est.effect(k)[:, problem.corrupted.first:]
        rank[k] = spearman(exact_e, est_e)
        top_exact = set(exact_e.abs().flatten().topk(args.screen_k).indices.tolist())
        top_est = set(est_e.abs().flatten().topk(args.screen_k).indices.tolist())
        recall[k] = len(top_exact & top_est) / args.screen_k
    t = time.perf_counter()
    trace(model, PROMPT, SUBJECT, dtype="bfloat16", screen=args.screen_k, progress=False, **kw)
    screened_s = time.perf_counter() - t

    f_fast, f_naive = fast_flops(problem, costs, computable), naive_flops(problem, costs, 3 * L * n)
    rows = [
        ("naive fp32 (extrapolated)", naive_s, f_naive, "float32"),
        ("fast fp32", results["float32"][1], f_fast, "float32"),
        ("fast bf16", results["bfloat16"][1], f_fast, "bfloat16"),
        (f"fast bf16, batch {args.big_batch}", results[f"bfloat16 batch {args.big_batch}"][1], f_fast, "bfloat16"),
    ]
    print(f"{model.name}: {n} tokens, {L} layers, 3 kinds, {args.samples} samples; "
          f"matmul rate fp32 {rates['float32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s")
    print(f"{'engine':<28}{'time s':>9}{'vs naive':>10}{'GFLOP':>9}{'% of matmul rate':>18}")
    table = []
    for name, secs, flops, dtype in rows:
        eff = flops / secs / rates[dtype]
        print(f"{name:<28}{secs:>9.2f}{naive_s / secs:>9.1f}×{flops / 1e9:>9.0f}{eff:>17.0%}")
        table.append({"engine": name, "seconds": secs, "speedup_vs_naive_fp32": naive_s / secs,
                      "gflop": flops / 1e9, "fraction_of_matmul_rate": eff, "dtype": dtype})
    for dtype, (_, secs) in screen.items():
        print(f"{'screen (attribution) ' + dtype:<28}{secs:>9.2f}")
    print(f"{'fast bf16 + screen top-' + str(args.screen_k):<28}{screened_s:>9.2f}")
    print(f"fast fp32 vs naive fp32, max |Δ| on {n_sampled} sampled cells: {max_diff:.2e}; bf16 vs fp32 max |Δ mean|: {bf16_diff:.3f}")
    print("screen vs exact: Spearman " + ", ".join(f"{k} {v:.2f}" for k, v in rank.items())
          + f"; top-{args.screen_k} recall " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()))
    out = {"model": model.name, "prompt": PROMPT, "n_tokens": n, "n_layers": L, "samples": args.samples,
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
           "matmul_gflops": {k: v / 1e9 for k, v in rates.items()}, "engines": table,
           "flop_ratio_naive_over_fast": f_naive / f_fast,
           "screen_seconds": {k: v[1] for k, v in screen.items()}, "screened_trace_seconds": screened_s,
           "screen_spearman": rank, f"screen_top{args.screen_k}_recall": recall,
           "fast_vs_naive_max_abs_diff": max_diff, "bf16_vs_fp32_max_abs_diff": bf16_diff}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
