"""Learned editors: trained here on the training data, then judged on records they never saw.

    $ python benchmarks/learned_bench.py                                   # MEND on zsRE 0–499, 600 steps at most
    $ python benchmarks/learned_bench.py --steps 200 --set lr=1e-4 --name mend-lr1e-4 --merge

Per editor: `tl.train_editor` on zsRE records 0–499 of zsre-sample.json (50 of them held out for
validation, early stopping), its training time and validation curve; then single edits
(`tl.evaluate`, edit / score / undo) on zsRE records 500.. (EasyEdit's reliability / generality /
locality) and on the known CounterFact records of the edit sample (edit_bench's: ROME's efficacy /
paraphrase / neighbourhood), seconds per edit. Writes benchmarks/results/learned.json; run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from edit_bench import ROOT, known_records
from host import host_record

RESULTS = ROOT / "benchmarks" / "results" / "learned.json"
ZSRE = ROOT.parent / "shared" / "data" / "zsre-sample.json"
PUBLISHED = {"mend": "EasyEdit on LLaMA-2-7B, ZsRE (as the issue quotes it): reliability 94.2, generality 90.3, "
                     "locality 97.0 (the source text was not available offline)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="mend")
    p.add_argument("--name", default=None, help="the run's name in learned.json (default: the method)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Params override (JSON value)")
    p.add_argument("--zsre-n", type=int, default=50, help="evaluated zsRE records (500..)")
    p.add_argument("--cf-n", type=int, default=30, help="evaluated known CounterFact records")
    p.add_argument("--merge", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.evaluation import read_records

    model = tl.load_model()
    Params = tl.editing.registry.get(args.method).Params
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    params = Params(**overrides)
    out = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    out.update({"model": model.name, "host": host_record(model), "published": PUBLISHED})
    runs = out.setdefault("runs", {})
    t = time.perf_counter()
    meta = tl.train_editor(args.method, model, ZSRE, limit=500, steps=args.steps, val_every=args.val_every,
                           patience=args.patience, params=params)
    trained_s = time.perf_counter() - t
    print(f"trained in {trained_s:.0f}s ({meta['step']} steps); best {meta['best']}", flush=True)
    run = {"method": args.method, "params": params.to_dict(), "overrides": overrides, "steps": meta["step"],
           "training_seconds": meta["history"][-1]["seconds"] if meta["history"] else trained_s,
           "best": meta["best"], "history": meta["history"], "checkpoint": meta["path"]}
    kwargs = {"params": Params(**{**overrides, "checkpoint": meta["path"]})}
    zsre = read_records(ZSRE)[500:500 + args.zsre_n]
    known, _ = known_records(model, 10_000)
    for suite, records in (("zsre", zsre), ("counterfact", known[:args.cf_n])):
        res = tl.evaluate(model, records, args.method, mode="single", progress=False, **kwargs)
        times = [r["edit"]["seconds"] for r in res.rows if r.get("edit", {}).get("seconds") is not None]
        run[suite] = {"n": len(res.rows), "pre": res.summary.get("pre"), "post": res.summary.get("post"),
                      "median_edit_s": statistics.median(times) if times else None}
        print(f"{suite}: {res.summary.get('post')} {run[suite]['median_edit_s']}", flush=True)
    runs[args.name or args.method] = run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
