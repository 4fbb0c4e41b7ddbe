"""Every registered method on the same CounterFact records, through `tl.compare`: one table.

    $ python benchmarks/compare_bench.py                        # every method, 10 known records each
    $ python benchmarks/compare_bench.py --methods rome,grace --n 20
    $ python benchmarks/compare_bench.py --records portability --n 20   # the knowledge graph's edits

`--records portability`: the first `--n` counterfactual edits of the shipped knowledge graph
(`tl.evaluate(model, "portability")`), with the portability column and a table of RippleEdits'
categories per method; writes benchmarks/results/portability.json and .png.

The first `--n` known records of the CounterFact edit sample (the model's top-1 answer is the true
one; edit_bench's records), single edits (edit, score, undo), ROME's efficacy / paraphrase /
neighbourhood scores, fluency (n-gram entropy of a 50-token generation), robustness (the share of
four rephrased asks that still give the new answer), seconds and numbers changed per edit. ROME
and FT-L/FT-M at layer 4, MEMIT and AlphaEdit at layers 2–6 (edit_bench's); the memory, adapter,
neuron, in-context and learned methods at their own layers (the learned ones with the checkpoint
`learned_bench.py` trained). Writes benchmarks/results/compare.json and compare.png; run alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from edit_bench import ROOT, known_records
from host import host_record

RESULTS = ROOT / "benchmarks" / "results" / "compare.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--records", default="known", choices=["known", "portability"])
    p.add_argument("--out", default=None, help="default: results/compare.json (known) or portability.json")
    p.add_argument("--merge", action="store_true", help="replace only these methods' rows in the existing results")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("TRACELAB_DATA", str(ROOT.parent / "shared" / "data"))
    import tracelab as tl
    from tracelab.viz.export import save_figure

    model = tl.load_model()
    methods = args.methods.split(",") if args.methods else None
    if args.records == "known":
        records, given = known_records(model, 10_000)[0][:args.n], \
            "counterfact-edit-sample.json, the first known records (edit_bench)"
    else:
        records, given = "portability", "the knowledge graph's edits (tracelab/data/graph.json)"
    out = args.out or str(RESULTS.with_name("compare.json" if args.records == "known" else "portability.json"))
    cmp = tl.compare(model, records, methods, n=args.n, layer=4, layers=[2, 3, 4, 5, 6], progress=False)
    cmp.meta.update(records=given, host=host_record(model))
    if args.merge and Path(out).exists():  # e.g. one method rerun after a fix: the others' rows stay
        from tracelab.evaluation import Comparison

        old = Comparison.load(out)
        old.rows.update(cmp.rows)
        old.methods.update(cmp.methods)
        old.meta.setdefault("merged", []).append({"methods": list(cmp.methods), "seconds": cmp.meta["seconds"],
                                                  "host": cmp.meta["host"]})
        cmp = old
    print(cmp.table())
    if args.records == "portability":
        print(category_table(cmp))
    cmp.save(out)
    save_figure(cmp.figure(), Path(out).with_suffix(".png"))
    print(f"wrote {out}")


def category_table(cmp) -> str:
    """Per method: the share of kept probes given, per RippleEdits category (after the edit, %)."""
    from tracelab.evaluation.graph import CATEGORIES

    seen = [c for c in CATEGORIES if any(f"port.{c}" in m.get("post", {}) for m in cmp.methods.values())]
    lines = [f"{'method':<14}" + "".join(f"{c[:16]:>18}" for c in seen)]
    for name, m in cmp.methods.items():
        post = m.get("post")
        if post:
            lines.append(f"{name:<14}" + "".join(f"{post[f'port.{c}']:18.1f}" if f"port.{c}" in post else f"{'–':>18}"
                                                 for c in seen))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
