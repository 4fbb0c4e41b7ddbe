"""bfloat16 autocast where the CPU emulates it: the defaults before (always bf16) and after (`dtypes.fast_bf16`).

    $ python benchmarks/autocast_bench.py                # a few minutes on an AVX2 CPU

The same work timed twice, once with bf16 autocast as every default used it before (`fast_bf16`
forced True) and once as shipped (`"auto"` / `bf16=True` autocast only where the CPU multiplies
bf16 natively: AMX or AVX-512 BF16). On such a CPU the two are the same run; on an AVX2 one the
second is float32. The work: a key-statistics forward (layer 4, 512 tokens, no cache), ROME's v*
optimisation for one edit (defaults: layer 4, 5 templates, up to 25 steps), and a causal trace of
one fact (mlp, 1 noise sample, top-10 cells exact); each once untimed first. Also the
model's-shape matmul probes and how far the results of the two runs differ. Writes benchmarks/results/autocast.json; run alone.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from unittest.mock import patch

import torch

from edit_bench import ROOT
from host import host_record

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"


def bf16_everywhere(on: bool):
    """`on`: every "auto" and `bf16=True` autocasts to bf16, whatever the CPU (the defaults before)."""
    from tracelab import dtypes
    return patch.object(dtypes, "fast_bf16", lambda device: True) if on else nullcontext()


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.editing import Request, key_stats
    from tracelab.editing.toolkit.keys import context_templates
    from tracelab.editing.toolkit.values import ValueParams, optimise_values

    model = tl.load_model()
    templates = context_templates(model, 5, 10)
    request = Request(SUBJECT, "{} is located in the city of", "Rome")
    work = {
        "key statistics (layer 4, 512 tokens)": lambda: key_stats(model, 4, tokens=512, cache=False,
                                                                   progress=False).moment,
        "ROME v* (one edit, layer 4)": lambda: optimise_values(model, [request], 4, "mlp_out", templates,
                                                               ValueParams(), progress=False)[0],
        "trace (mlp, 1 sample, top-10 exact)": lambda: tl.trace(model, PROMPT, SUBJECT, kinds="mlp", samples=1,
                                                                 dtype="auto", screen=10, progress=False).scores["mlp"],
    }
    host = host_record(model)
    print(f"host: {host['cpu']} ({host['bf16_matmul_isa']}), matmul GFLOP/s {host['matmul_gflops']}, "
          f"auto picks bf16: {host['auto_bf16']}")
    rows = []
    for name, run in work.items():
        run()  # warm-up (the corpus read, the first forward), in the faster of the two settings
        timed = {}
        for label, forced in (("before", True), ("after", False)):
            with bf16_everywhere(forced):
                torch.manual_seed(0)
                t = time.perf_counter()
                result = run().float()
                timed[label] = (time.perf_counter() - t, result)
        (before, a), (after, b) = timed["before"], timed["after"]
        diff = float((a - b).norm() / b.norm().clamp_min(1e-12))
        rows.append({"work": name, "before_s": before, "after_s": after, "ratio": before / after,
                     "relative_difference": diff})
        print(f"{name:<40} before {before:8.2f} s  after {after:7.2f} s  ({before / after:5.1f}x)  "
              f"results differ by {diff:.2%} (relative norm)")
    out = ROOT / "benchmarks" / "results" / "autocast.json"
    out.write_text(json.dumps({"rows": rows, "host": host}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
