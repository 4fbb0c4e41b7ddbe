"""Causal tracing speed on the embedded model: fast engine vs the naive reference, and the screen.

    $ python benchmarks/trace_bench.py [--samples 10] [--rounds 3] [--naive-cells 16]

One fact, three kinds, 10 samples, in one process. This machine's speed drifts by up to 3× within
seconds (a shared host), so every engine is timed once per round, round-robin, and the numbers
are medians over rounds; each speed-up is the median of per-round ratios (both engines timed in
the same round). The matmul rate is probed right before and after every timed run (the model's
five layer matmuls at 4,096 rows, in the engine's dtype), and an engine's share of the matmul rate
uses the mean of its own two probes. The naive engine (one full forward per cell, LM head at
every position, the paper's algorithm) is timed on a random subset of cells per kind and
extrapolated: its cells all cost the same. FLOPs are counted from the shapes each engine runs.
Run it alone, without OMP_WAIT_POLICY=PASSIVE (it halves the two-thread matmul rate here).

The hosts this runs on differ: some have AMX (bf16 matmuls ~9× fp32), some only AVX-512 BF16
(~2×). So the run records the CPU and its bf16 instructions, and the *matmul floor* of a fast bf16
trace: its FLOPs at the probed bf16 rate, the time no engine doing those FLOPs can beat on this
host; naive time / floor is the largest speed-up the host allows.
Prints a table; writes benchmarks/results/trace.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import tracelab
from tracelab.heap import reuse_heap
from tracelab.tracing import GaussianNoise
from tracelab.tracing.api import prepare, trace
from tracelab.tracing.fast import plan_rows
from tracelab.tracing.naive import run_naive

from host import cpu_description, layer_linears, matmul_rate

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"


def model_costs(model) -> dict:
    """FLOPs per token of one layer's linear maps (all, and the key/value part), attention per
    query-key pair, LM head per position."""
    linear = sum(2 * m.in_features * m.out_features for m in layer_linears(model))
    attn = model.layer(0).self_attn
    kv = sum(2 * m.in_features * m.out_features for m in (attn.k_proj, attn.v_proj))
    cfg = model.hf.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or model.d_model // heads
    vocab = model.hf.get_output_embeddings().weight.shape[0]
    return {"linear": linear, "kv": kv, "attn_per_key": 4 * heads * head_dim, "head": 2 * model.d_model * vocab}


def full_forward_flops(problem, costs, head_positions: int) -> float:
    n = problem.n_tokens
    return (problem.n_layers * (n * costs["linear"] + n * (n + 1) / 2 * costs["attn_per_key"])
            + head_positions * costs["head"])


def fast_flops(problem, costs, cells) -> float:
    """What the fast engine runs: per token t, each row from its join layer on positions ≥ t (the
    last layer: keys/values at every position, the rest at the last), the LM head at the last
    position; plus the clean and corrupted runs (LM head at the last position) and the entering
    states of the mlp/attn rows (each layer once per sample with the sublayer restored)."""
    total, n, L = 0.0, problem.n_tokens, problem.n_layers
    for t in range(n):
        rows = plan_rows(problem, cells, t)
        if not len(rows):
            continue
        q = n - t
        below_last = (L - 1 - rows.join).clamp(min=0).sum().item()  # row-layers below the last layer
        at_last = int((rows.join <= L - 1).sum())
        keys = sum(t + i + 1 for i in range(q))  # causal keys per walked query
        total += below_last * (q * costs["linear"] + keys * costs["attn_per_key"])
        total += at_last * (q * costs["kv"] + (costs["linear"] - costs["kv"]) + n * costs["attn_per_key"])
        total += len(rows) * costs["head"]
    entered = 2 * problem.corrupted.samples * full_forward_flops(problem, costs, 0)  # mlp + attn, every layer
    return total + entered + (1 + problem.corrupted.samples) * full_forward_flops(problem, costs, 1)


def naive_flops(problem, costs, n_cells) -> float:
    return n_cells * problem.corrupted.samples * full_forward_flops(problem, costs, problem.n_tokens)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().float(), b.flatten().argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of every timing")
    parser.add_argument("--naive-cells", type=int, default=16, help="naive cells timed per kind and round")
    parser.add_argument("--screen-k", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "trace.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    model = tracelab.load_model()
    kw = dict(corruption=GaussianNoise(), samples=args.samples, window=10)
    problem = prepare(model, PROMPT, SUBJECT, **kw)
    costs = model_costs(model)
    L, n = problem.n_layers, problem.n_tokens
    computable = {k: torch.zeros(L, n, dtype=torch.bool) for k in problem.kinds}
    for k in computable:
        computable[k][:, problem.corrupted.first:] = True
    trace(model, PROMPT, SUBJECT, progress=False, samples=2)  # warm-up: caches, thread pool

    gen = torch.Generator().manual_seed(0)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    times = {e: [] for e in ("naive fp32", "fast fp32", "fast bf16", "screen fp32", "screen bf16", "screened bf16")}
    rates = {e: [] for e in times}
    results, naive_scores, naive_cells = {}, [], []

    def timed(name: str, dtype: str, fn):
        before = matmul_rate(model, dtypes[dtype])
        t = time.perf_counter()
        out = fn()
        times[name].append(time.perf_counter() - t)
        rates[name].append((before + matmul_rate(model, dtypes[dtype])) / 2)
        return out

    for r in range(args.rounds):
        sample = {}
        for k in problem.kinds:
            mask = torch.zeros(L, n, dtype=torch.bool)
            mask.view(-1)[torch.randperm(L * n, generator=gen)[: args.naive_cells]] = True
            sample[k] = mask
        with reuse_heap():  # the same allocator setting trace() gives every engine
            naive_scores.append(timed("naive fp32", "float32", lambda: run_naive(problem, sample, progress=False)))
        naive_cells.append(sample)
        times["naive fp32"][-1] *= 3 * L * n / sum(int(m.sum()) for m in sample.values())  # extrapolated
        results["fast fp32"] = timed("fast fp32", "float32", lambda: trace(model, PROMPT, SUBJECT, progress=False, **kw))
        results["fast bf16"] = timed("fast bf16", "bfloat16",
                                     lambda: trace(model, PROMPT, SUBJECT, dtype="bfloat16", progress=False, **kw))
        for dtype in ("float32", "bfloat16"):
            name = f"screen {'fp32' if dtype == 'float32' else 'bf16'}"
            results[name] = timed(name, dtype, lambda: tracelab.attribute(model, PROMPT, SUBJECT, dtype=dtype,
                                                                            progress=False, **kw))
        timed("screened bf16", "bfloat16", lambda: trace(model, PROMPT, SUBJECT, dtype="bfloat16",
                                                         screen=args.screen_k, progress=False, **kw))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    fast32 = results["fast fp32"]
    max_diff = max(float((fast32.scores[k][:, s[k]] - ns[k][:, s[k]]).abs().max())
                   for s, ns in zip(naive_cells, naive_scores) for k in problem.kinds)
    bf16_diff = max(float((results["fast bf16"].mean(k) - fast32.mean(k)).abs().max()) for k in problem.kinds)
    est = results["screen fp32"]
    rank, recall = {}, {}
    for k in problem.kinds:
        exact_e, est_e = fast32.effect(k)[:, problem.corrupted.first:], est.effect(k)[:, problem.corrupted.first:]
        rank[k] = spearman(exact_e, est_e)
        top_exact = set(exact_e.abs().flatten().topk(args.screen_k).indices.tolist())
        top_est = set(est_e.abs().flatten().topk(args.screen_k).indices.tolist())
        recall[k] = len(top_exact & top_est) / args.screen_k

    f_fast, f_naive = fast_flops(problem, costs, computable), naive_flops(problem, costs, 3 * L * n)
    flops = {"naive fp32": f_naive, "fast fp32": f_fast, "fast bf16": f_fast}
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = {k: statistics.median(a / b for a, b in zip(times["naive fp32"], times[k])) for k in times}
    print(f"{model.name}: {n} tokens, {L} layers, 3 kinds, {args.samples} samples, {args.rounds} rounds; "
          f"matmul rate (median of probes) fp32 {statistics.median(rates['fast fp32']) / 1e9:.0f} GFLOP/s, "
          f"bf16 {statistics.median(rates['fast bf16']) / 1e9:.0f} GFLOP/s")
    print(f"{'engine':<26}{'time s':>9}{'min s':>8}{'vs naive':>10}{'GFLOP':>9}{'% of matmul rate':>18}")
    table = []
    for name in times:
        row = {"engine": name, "seconds_median": med[name], "seconds_all": times[name],
               "speedup_vs_naive_fp32": speedup[name] if name != "naive fp32" else 1.0,
               "matmul_gflops_during": [x / 1e9 for x in rates[name]]}
        line = f"{name:<26}{med[name]:>9.2f}{min(times[name]):>8.2f}{row['speedup_vs_naive_fp32']:>9.1f}×"
        if name in flops:
            eff = statistics.median(flops[name] / t / r for t, r in zip(times[name], rates[name]))
            row.update(gflop=flops[name] / 1e9, fraction_of_matmul_rate=eff)
            line += f"{flops[name] / 1e9:>9.0f}{eff:>17.0%}"
        print(line)
        table.append(row)
    rate32, rate16 = statistics.median(rates["fast fp32"]), statistics.median(rates["fast bf16"])
    floor = f_fast / rate16  # seconds of a fast bf16 trace at 100 % of the bf16 matmul rate
    cpu = cpu_description()
    print(f"host: {cpu['cpu']} ({cpu['bf16_matmul_isa']}); bf16 matmuls {rate16 / rate32:.1f}× fp32; "
          f"fast bf16 matmul floor {floor:.1f} s, so at most {med['naive fp32'] / floor:.1f}× naive fp32 here "
          f"(targets: < 15 s, ≥ 15×)")
    print(f"fast fp32 vs naive fp32, max |Δ| on {sum(int(m.sum()) for s in naive_cells for m in s.values())} "
          f"sampled cells: {max_diff:.2e}; bf16 vs fp32 max |Δ mean|: {bf16_diff:.3f}")
    print("screen vs exact: Spearman " + ", ".join(f"{k} {v:.2f}" for k, v in rank.items())
          + f"; top-{args.screen_k} recall " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()))
    out = {"model": model.name, "prompt": PROMPT, "n_tokens": n, "n_layers": L, "samples": args.samples,
           "rounds": args.rounds, "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), **cpu},
           "bf16_over_fp32_matmul_rate": rate16 / rate32, "fast_bf16_matmul_floor_seconds": floor,
           "naive_over_floor": med["naive fp32"] / floor,
           "engines": table, "flop_ratio_naive_over_fast": f_naive / f_fast,
           "screen_spearman": rank, f"screen_top{args.screen_k}_recall": recall,
           "fast_vs_naive_max_abs_diff": max_diff, "bf16_vs_fp32_max_abs_diff": bf16_diff}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
