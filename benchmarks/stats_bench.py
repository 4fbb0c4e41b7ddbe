"""Key statistics: a float32 forward against a bfloat16 (autocast) forward, both summed in float32.

    $ python benchmarks/stats_bench.py                     # 100k tokens, ROME on 100 known records
    $ python benchmarks/stats_bench.py --rome 20 --tokens 20000     # smaller

What the faster forward costs, measured on the embedded model, run alone:
- time for `--tokens` corpus tokens at `--time-layer` (14, the layer `make demo` edits), each
  forward dtype timed in turn, `--rounds` times, with the host's matmul rates recorded;
- the change in C: ‖C_bf16 − C_fp32‖_F / ‖C_fp32‖_F at that layer and at the ROME layer;
- ROME's scores at `--layer` (4, the edit bench's) on the first `--rome` known CounterFact
  records of the edit bench, once with each C (same records, same code: only C differs).
Prints a table; writes benchmarks/results/stats.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from edit_bench import bench_rome, known_records, summarise
from host import host_record

RESULTS = Path(__file__).resolve().parent / "results" / "stats.json"
FORWARDS = {"float32": None, "bfloat16": torch.bfloat16}


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--time-layer", type=int, default=14)
    p.add_argument("--layer", type=int, default=4, help="ROME layer")
    p.add_argument("--rome", type=int, default=100, help="ROME single edits per statistic")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scan", type=int, default=10_000)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.editing import key_stats

    model = tl.load_model()
    out = {"args": vars(args), "host_before": host_record(model), "seconds": {k: [] for k in FORWARDS}}
    computed = {}  # (forward, layer) → KeyStats
    for _ in range(args.rounds):
        for name, forward in FORWARDS.items():
            t = time.perf_counter()
            s = key_stats(model, args.time_layer, tokens=args.tokens, forward_dtype=forward, cache=False,
                          progress=False)
            out["seconds"][name].append(time.perf_counter() - t)
            computed[name, args.time_layer] = s
            print(f"layer {args.time_layer}, {args.tokens} tokens, {name} forward: "
                  f"{out['seconds'][name][-1]:.1f}s", flush=True)
    out["host_after"] = host_record(model)
    for name, forward in FORWARDS.items():
        computed[name, args.layer] = key_stats(model, args.layer, tokens=args.tokens, forward_dtype=forward,
                                               cache=False, progress=False)
    out["relative_change_of_C"] = {str(l): relative_change(computed["bfloat16", l].moment,
                                                           computed["float32", l].moment)
                                   for l in (args.time_layer, args.layer)}
    known, _ = known_records(model, args.scan)
    recs = known[:args.rome]
    out["rome"] = {}
    for name in FORWARDS:
        rows, times = bench_rome(model, recs, args.layer, computed[name, args.layer])
        out["rome"][name] = {"n": len(recs), "post": summarise(rows), "pre": summarise(rows, "pre"),
                             "median_total_s": statistics.median(x["total"] for x in times)}
        print(f"ROME ×{len(recs)} with the {name}-forward C: {out['rome'][name]['post']}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print_table(out)
    print(f"wrote {RESULTS}")


def print_table(out: dict) -> None:
    cols = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score",
            "easyedit.reliability", "easyedit.generality", "easyedit.locality")
    a = out["args"]
    print(f"\n{'forward':<10}{'s (median)':>11}{'ES':>7}{'PS':>7}{'NS':>7}{'rel':>7}{'gen':>7}{'loc':>7}")
    for name in FORWARDS:
        s = out["rome"][name]["post"]
        print(f"{name:<10}{statistics.median(out['seconds'][name]):>11.1f}"
              + "".join(f"{s.get(c, float('nan')):7.1f}" for c in cols))
    ratio = statistics.median(f / b for f, b in zip(out["seconds"]["float32"], out["seconds"]["bfloat16"]))
    print(f"{a['tokens']} tokens at layer {a['time_layer']}; bf16 forward {ratio:.2f}× faster (median of per-round "
          f"ratios); ‖ΔC‖/‖C‖ {out['relative_change_of_C']}; ROME ×{a['rome']} at layer {a['layer']}")
    h = out["host_before"]
    print(f"host: {h['cpu']} ({h['bf16_matmul_isa']}), matmul GFLOP/s before {h['matmul_gflops']}, "
          f"after {out['host_after']['matmul_gflops']}")


if __name__ == "__main__":
    main()
