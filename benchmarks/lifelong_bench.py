"""Lifelong editing: one stream of T edits with no undo, every edited case scored at checkpoints.

    $ python benchmarks/lifelong_bench.py                                  # T = 500 (zsRE 199–698), the methods below
    $ python benchmarks/lifelong_bench.py --methods grace,rome --T 100 --zsre-from 500 --suites zsre
    $ python benchmarks/lifelong_bench.py --methods memit --merge          # add one, keep the rest
    $ python benchmarks/lifelong_bench.py --methods wise-10 --merge        # a variant (VARIANTS)

Per method and suite, through `tl.evaluate(mode="sequential")`: the first T records edited in
order (zsRE: records --zsre-from.. of zsre-sample.json, EasyEdit's reliability / generality / locality;
CounterFact: the known records of edit_bench, ROME's efficacy / paraphrase / neighbourhood), all
cases edited so far scored at each checkpoint; the perplexity of a held-out text (WordNet glosses
from the end of the corpus, which key statistics never read) before the stream and at each
checkpoint (the collapse guard's text, `editing.guard.held_out_texts`); seconds per edit (median);
numbers added or changed per edit (median); edits refused (`mend+guard`: under the collapse guard).
A run is kept under "method/suite/T<edits>", so a stream of 100 and one of 500 sit side by side.
Writes benchmarks/results/lifelong.json and lifelong.png; run alone.
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

RESULTS = ROOT / "benchmarks" / "results" / "lifelong.json"
ZSRE = ROOT.parent / "shared" / "data" / "zsre-sample.json"
# How each method is called in the stream: the layers of edit_bench (ROME's, MEMIT's window). The
# learned editors (mend, ke, serac) use the newest checkpoint in the cache (learned_bench trains it).
EDIT_KWARGS = {"rome": {"layer": 4}, "memit": {"layers": [2, 3, 4, 5, 6]}, "alphaedit": {"layers": [2, 3, 4, 5, 6]},
               "ft-l": {"layer": 4}, "grace": {}, "t-patcher": {}, "wise": {}, "mend": {}, "ke": {}, "serac": {}}
# Runs of a method at other settings: name → (method, params as keyword arguments of its Params, more edit kwargs).
VARIANTS = {"wise-10": ("wise", {"save_freq": 10, "merge_freq": 20}, {}),  # shards scaled to this model's memory
            "mend+guard": ("mend", {}, {"guard": "16"}), "ke+guard": ("ke", {}, {"guard": "16"})}  # the collapse guard
METRICS = {"zsre": ("easyedit.reliability", "easyedit.generality", "easyedit.locality"),
           "counterfact": ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score")}
LEARNED = {"mend", "ke", "serac"}  # trained by learned_bench on zsRE records 0..499: never stream those to them
PUBLISHED = ("WISE (Wang et al. 2024, Table 2), LLaMA-2-7B, ZsRE, T = 1000, rel. / gen. / loc.: GRACE 0.93 / 0.08 / "
             "1.00, WISE 0.77 / 0.72 / 1.00 (as the issue quotes them; the paper's text was not available offline)")


def records(model, suite: str, T: int, zsre_from: int):
    """The stream's first T records: zsRE from record `zsre_from`, CounterFact's known records."""
    from tracelab.evaluation import read_records

    if suite == "zsre":
        zsre = read_records(ZSRE)
        if zsre_from + T > len(zsre):
            raise SystemExit(f"{ZSRE.name} has {len(zsre)} records: from record {zsre_from} there are only "
                             f"{max(0, len(zsre) - zsre_from)}, not T = {T}; pass --zsre-from {len(zsre) - T}")
        return zsre[zsre_from:zsre_from + T]
    known, _ = known_records(model, 10_000)
    return known[:T]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="grace,t-patcher,wise,rome,memit,alphaedit,ft-l")
    p.add_argument("--suites", default="zsre,counterfact")
    p.add_argument("--T", type=int, default=500, help="edits in each stream")
    p.add_argument("--checkpoints", default="1,10,100,500")
    p.add_argument("--zsre-from", type=int, default=199,
                   help="first zsRE record of the stream (records 0–499 train the learned editors: 500 for them)")
    p.add_argument("--merge", action="store_true", help="keep the runs of lifelong.json this run does not redo")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--plot", action="store_true", help="only redraw the table and figure from --out")
    args = p.parse_args()
    if args.plot:
        out = json.loads(Path(args.out).read_text())
        print_table(out)
        figure(out, Path(args.out).with_suffix(".png"))
        return
    learned = [m for m in args.methods.split(",") if VARIANTS.get(m, (m,))[0] in LEARNED]
    if learned and "zsre" in args.suites and args.zsre_from < 500:
        p.error(f"trained on zsRE records 0–499 ({', '.join(learned)}): stream with --zsre-from 500")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("TRACELAB_DATA", str(ROOT.parent / "shared" / "data"))
    import tracelab as tl
    from tracelab.editing.guard import held_out_texts
    from tracelab.models.text import perplexity

    model = tl.load_model()
    out = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    out.update({"model": model.name, "args": vars(args), "host": host_record(model), "published": PUBLISHED})
    out.setdefault("runs", {})
    texts = held_out_texts()
    health = lambda m: {"perplexity": perplexity(m, texts)}
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    for suite in args.suites.split(","):
        cases = records(model, suite, args.T, args.zsre_from)
        for method in args.methods.split(","):
            t = time.perf_counter()
            registered, settings, extra = VARIANTS.get(method, (method, {}, {}))
            kwargs = dict(EDIT_KWARGS.get(registered, {}), **extra)
            if "guard" in kwargs:  # on the benchmark's own held-out text: its 16 paragraphs
                kwargs["guard"] = tl.Guard(paragraphs=int(kwargs["guard"]))
            if settings:
                kwargs["params"] = tl.editing.registry.get(registered).Params(**settings)
            res = tl.evaluate(model, cases, registered, mode="sequential", checkpoints=checkpoints,
                              at_checkpoint=health, progress=False, **kwargs)
            name = f"{method}/{suite}/T{len(cases)}"
            out["runs"][name] = {
                "method": method, "suite": suite, "T": len(cases), "pre": res.summary["pre"],
                "first_record": args.zsre_from if suite == "zsre" else 0, "host": out["host"],
                "checkpoints": res.meta["checkpoints"], "before": res.meta["before"],
                "median_edit_s": statistics.median(res.meta["edit_seconds"]),
                "median_parameters": statistics.median(res.meta["edit_parameters"]),
                "edit_kwargs": {k: v if k != "guard" else v.to_dict() for k, v in kwargs.items() if k != "params"},
                "params": settings,
                "refused": len(res.meta["refused"]), "seconds": time.perf_counter() - t}
            last = res.meta["checkpoints"][str(len(cases))]
            scores = " ".join(f"{k.split('.')[-1]} {last.get(k, float('nan')):.1f}" for k in METRICS[suite])
            print(f"{name}: {scores} ppl {last['perplexity']:.2f} (before {res.meta['before']['perplexity']:.2f})"
                  f" {out['runs'][name]['median_edit_s']:.1f}s/edit", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    print_table(out)
    figure(out, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")


def print_table(out: dict) -> None:
    print(f"\n{'method/suite/T':<28}{'T':>5}  {'m1':>6}{'m2':>6}{'m3':>6}  ppl (before)  s/edit  numbers/edit")
    for name, r in out["runs"].items():
        for T, c in r["checkpoints"].items():
            print(f"{name:<28}{T:>5}  " + "".join(f"{c.get(k, float('nan')):6.1f}" for k in METRICS[r["suite"]])
                  + f"  {c['perplexity']:.2f} ({r['before']['perplexity']:.2f})  {r['median_edit_s']:.2f}"
                  f"  {r['median_parameters']:.0f}")


def figure(out: dict, path: Path) -> None:
    """One panel per (suite, metric): the score of every edited case against T, one line per method
    (`path` with .png, through the project's paper export)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from tracelab.viz.paper import export_figures

    suites = sorted({r["suite"] for r in out["runs"].values()})
    panels = [(suite, metric) for suite in suites for metric in (*METRICS[suite], "perplexity")]
    fig = make_subplots(rows=len(suites), cols=4, subplot_titles=[f"{s}: {m.split('.')[-1]}" for s, m in panels])
    from plotly.colors import qualitative

    palette = qualitative.D3 + ["#000000", "#B68100"] + qualitative.Dark24  # D3's ten first: no two alike
    colours = dict(zip(sorted({r["method"] for r in out["runs"].values()}), palette))
    shown = set()
    for i, (suite, metric) in enumerate(panels):
        for r in (r for r in out["runs"].values() if r["suite"] == suite):
            Ts = sorted(int(t) for t in r["checkpoints"])
            label = r["method"] if r["T"] <= 100 else f"{r['method']}, T = {r['T']}"  # longer streams dashed
            line = {"color": colours[r["method"]], "dash": "solid" if r["T"] <= 100 else "dash"}
            fig.add_trace(go.Scatter(x=Ts, y=[r["checkpoints"][str(t)].get(metric) for t in Ts], name=label, line=line,
                                     showlegend=label not in shown, mode="lines+markers"),
                          row=i // 4 + 1, col=i % 4 + 1)
            shown.add(label)
        if metric == "perplexity":       # a collapsed model's perplexity is orders of magnitude off
            fig.update_yaxes(type="log", row=i // 4 + 1, col=i % 4 + 1)
    fig.update_xaxes(type="log", title_text="edits in the stream (T)")
    fig.update_layout(width=1100, height=320 * len(suites), template="simple_white")
    export_figures({path.stem: fig}, path.parent, formats=("png",))


if __name__ == "__main__":
    main()
