"""ROME's Figure 2 on the embedded model: the average indirect effect by token class over every
fact of known_1000.json that the model knows.

    $ python benchmarks/figure2.py                       # all known facts, 10 samples, top-20 cells exact
    $ python benchmarks/figure2.py --limit 20 --screen 0           # every cell exact (~25 s a fact here)

`tl.trace_dataset` traces each fact the model answers right (top-1 next token = the attribute's
first token; the others are skipped and counted) for hidden states, MLP and attention (windows
of 10 layers), bf16, with `--samples` noise samples per cell; with `--screen k` (default 20) every
cell is first estimated by attribution patching and the top k per kind are then traced exactly
(`trace(..., screen=k)`: a full exact trace is ~25 s a fact here, 283 facts ~2 h), which the
figure's title and the JSON's caption say. Each trace is cached under `--traces` (a rerun
resumes). Writes figures/average_known.{pdf,svg,png} (the caption's numbers in
benchmarks/results/figure2.json: facts, skipped, samples, screen, run time, host); run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from edit_bench import ROOT
from host import host_record

KNOWN = ROOT.parent / "shared" / "data" / "known_1000.json"
RESULTS = ROOT / "benchmarks" / "results" / "figure2.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="at most this many known facts (default: all)")
    p.add_argument("--samples", type=int, default=10, help="noise samples per trace (the paper: 10)")
    p.add_argument("--screen", type=int, default=20,
                   help="run only the top-k cells per kind exactly, the rest estimated by attribution (0: all exact)")
    p.add_argument("--traces", default=str(Path.home() / ".cache" / "tracelab" / "figure2"),
                   help="where each fact's trace is kept (a rerun resumes)")
    p.add_argument("--out", default=str(ROOT / "figures"), help="folder for the figure")
    p.add_argument("--results", default=str(RESULTS), help="the run's numbers (JSON)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.tracing.names import TOKEN_CLASSES
    from tracelab.viz.paper import export_figures, figure_average

    model = tl.load_model()
    t = time.perf_counter()
    average = tl.trace_dataset(model, KNOWN, out=Path(args.traces) / f"samples{args.samples}", limit=args.limit,
                               samples=args.samples, dtype="bfloat16", screen=args.screen or None)
    seconds = time.perf_counter() - t
    fig = figure_average(average)
    how = f"top {args.screen} cells per kind exact, the rest estimated" if args.screen else "every cell exact"
    short = f"top {args.screen} cells exact" if args.screen else "all cells exact"  # fits the column's width
    fig.update_layout(title=f"{average.n_facts} known facts, {args.samples} samples, {short}")
    paths = export_figures({"average_known": fig}, args.out)
    last_subject = TOKEN_CLASSES.index("last_subject")
    peaks = {kind: int(average.mean(kind)[last_subject].nan_to_num(-1).argmax()) for kind in average.curves}
    out = {"model": model.name, "facts": average.n_facts, "skipped": average.skipped, "samples": args.samples,
           "screen": args.screen, "caption": how,
           "seconds": seconds, "seconds_per_fact": seconds / average.n_facts, "settings": average.settings,
           "peak_layer_at_last_subject_token": peaks, "figures": [str(p) for p in paths],
           "host": host_record(model)}
    Path(args.results).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "host"}, indent=1))



if __name__ == "__main__":
    main()
