"""Every method on the same records, judged the same way: the baselines (FT-L, FT-M, LoRA, KN, IKE),
ROME, and the memory methods (GRACE, T-Patcher, WISE), single edits.

    $ python benchmarks/baselines_bench.py                       # 50 CounterFact + 50 zsRE edits per method
    $ python benchmarks/baselines_bench.py --n 10 --zsre-n 10 --dev 8        # smaller
    $ python benchmarks/baselines_bench.py --methods ft-l,ike --merge

For each method, at its paper's defaults and then at the best of a few settings found on a
*development* slice (known records of `counterfact-train.json`, never the evaluated ones):
- CounterFact: the first `--n` known records of the edit sample (the same records as ROME in
  `edit_bench.py`), `rome.*` and `easyedit.*` metrics;
- zsRE: records 500.. of `zsre-sample.json` (0–499 are the learned editors' training split),
  EasyEdit's reliability / generality / locality.
Single mode (edit, score, undo per record) through `tl.evaluate`; time per edit (median) and the
parameters each edit changes. The weight editors edit at `--layer` (ROME's layer in edit_bench;
`layer="auto"` would trace every record first). Writes benchmarks/results/baselines.json; run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edit_bench import ROOT, known_records
from host import host_record

RESULTS = ROOT / "benchmarks" / "results" / "baselines.json"
TRAIN = ROOT.parent / "shared" / "data" / "counterfact-train.json"
ZSRE = ROOT.parent / "shared" / "data" / "zsre-sample.json"
METHODS = ("ft-l", "ft-m", "lora", "kn", "ike", "rome", "grace", "t-patcher", "wise")
# The development sweep: a few settings per method, around the paper's defaults.
SWEEPS = {
    "ft-l": [{"epsilon": e} for e in (5e-4, 5e-3, 5e-2)],
    "ft-m": [{"lr": lr} for lr in (5e-4, 2e-3, 1e-2)],
    "lora": [{"stop_loss": 1e-2}, {"stop_loss": 1e-2, "target_modules": ("down_proj",)}],
    "kn": [{"lambda_new": 8.0}, {"lambda_new": 32.0, "threshold": 0.1}],
    "ike": [{"k": 4}, {"k": 16}],
}
# Published numbers, each with its source and model (only those checked against the source text).
PUBLISHED = {
    "ft-l": "KnowEdit (Zhang et al. 2024, Table 4), Llama-2-7b-chat, ZsRE: edit succ. 54.65, locality 71.12",
    "ft-m": "KnowEdit (Zhang et al. 2024, Table 4), Llama-2-7b-chat, ZsRE: edit succ. 99.87, locality 89.78",
    "lora": "KnowEdit (Zhang et al. 2024, Table 4), AdaLoRA, Llama-2-7b-chat, ZsRE: edit succ. 69.86, locality 72.21",
    "kn": "not checked here (the ROME paper's Table 4 reports KN on GPT-2 XL CounterFact; its text was not available offline)",
    "ike": "not checked here (Zheng et al. 2023 report IKE on GPT-J CounterFact; KnowEdit's in-context ICE, ZsRE: 66.01 / 23.14)",
    "rome": "ROME on GPT-2 XL (Meng et al. 2022, CounterFact): ES 100 / PS 96.4 / NS 75.4",
    "grace": "single edits not checked here (its published numbers are sequential: see lifelong_bench.py)",
    "t-patcher": "single edits not checked here (its published numbers are sequential: see lifelong_bench.py)",
    "wise": "single edits not checked here (its published numbers are sequential: see lifelong_bench.py)",
}


def params_for(method: str, overrides: dict):
    from tracelab.editing import registry

    return registry.get(method).Params(**overrides)


def run(model, records, method: str, params, layer: int) -> dict:
    import tracelab as tl
    from tracelab.editing import registry

    # the memory methods edit at their paper's layer (layer="auto" is that, not a trace); the others at `layer`
    own = registry.get(method).family == "memory"
    kwargs = {} if registry.get(method).layers == "none" else {"layer": "auto" if own else layer}
    res = tl.evaluate(model, records, method, mode="single", params=params, progress=False, **kwargs)
    made = [r["edit"] for r in res.rows if r.get("edit", {}).get("seconds") is not None]
    times, changed = [e["seconds"] for e in made], [e["parameters"] for e in made]
    refused = sum("refused" in r.get("edit", {}) for r in res.rows)  # scored as the unedited model
    s = res.summary
    return {"n": len(res.rows), "pre": s.get("pre", {}), "post": s.get("post", {}),
            "median_edit_s": statistics.median(times) if times else None, "edit_s": times, "refused": refused,
            "parameters_changed": statistics.median(changed) if changed else None, "params": params.to_dict()}


def score(summary: dict) -> float:
    """What the development sweep maximises: the mean of efficacy, paraphrase and neighbourhood."""
    keys = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score")
    return statistics.mean(summary.get(k, 0.0) for k in keys)


def dev_records(model, n: int, scan: int):
    """Known records of the training split (first `scan`), one per subject: the development slice."""
    from tracelab.evaluation import read_records

    recs = read_records(TRAIN, limit=scan)
    out, seen = [], set()
    for i in range(0, len(recs), 64):
        chunk = recs[i:i + 64]
        top = model.next_token_logits([r.request.text for r in chunk]).argmax(-1).tolist()
        for r, t in zip(chunk, top):
            if r.request.subject not in seen and t == model.target_ids(r.request.text, r.request.target_true)[0]:
                seen.add(r.request.subject)
                out.append(r)
        if len(out) >= n:
            break
    return out[:n]


def dev_pool(dev) -> str:
    """The training split without the development records (IKE refuses a pool holding what it edits)."""
    path = Path(tempfile.gettempdir()) / "tracelab-ike-dev-pool.json"
    subjects = {r.request.subject for r in dev}
    records = [r for r in json.loads(TRAIN.read_text()) if r["subject"] not in subjects]
    path.write_text(json.dumps(records))
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--n", type=int, default=50, help="evaluated CounterFact edits (the timings' medians)")
    p.add_argument("--zsre-n", type=int, default=50, help="evaluated zsRE edits")
    p.add_argument("--dev", type=int, default=20, help="development records per setting (0: no sweep)")
    p.add_argument("--dev-scan", type=int, default=3000, help="training records scanned for known ones")
    p.add_argument("--layer", type=int, default=4)
    p.add_argument("--scan", type=int, default=10_000, help="edit-sample records scanned (as edit_bench)")
    p.add_argument("--merge", action="store_true", help="keep the methods of baselines.json this run skips")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--table", action="store_true", help="print the README's table from the results and stop")
    args = p.parse_args()
    if args.table:
        return markdown_table(json.loads(Path(args.out).read_text()))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("TRACELAB_DATA", str(ROOT.parent / "shared" / "data"))
    import tracelab as tl
    from tracelab.evaluation import read_records

    model = tl.load_model()
    out = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    out.update({"model": model.name, "args": vars(args), "host": host_record(model), "published": PUBLISHED})
    out.setdefault("methods", {})
    known, _ = known_records(model, args.scan)
    counterfact = known[:args.n]
    zsre = read_records(ZSRE)[500:500 + args.zsre_n]
    dev = dev_records(model, args.dev, args.dev_scan) if args.dev else []
    print(f"{len(counterfact)} CounterFact known records, {len(zsre)} zsRE records, {len(dev)} development records")
    for method in args.methods.split(","):
        t = time.perf_counter()
        entry = {"published": PUBLISHED.get(method)}
        defaults = params_for(method, {})
        entry["counterfact"] = run(model, counterfact, method, defaults, args.layer)
        entry["zsre"] = run(model, zsre, method, defaults, args.layer)
        print(f"{method} defaults: CF {entry['counterfact']['post']}; zsRE {entry['zsre']['post']}", flush=True)
        if dev:
            sweep = []
            for overrides in SWEEPS.get(method, []):
                # IKE's pool is the training split: for the development records, the split without them
                extra = {"pool": dev_pool(dev)} if method == "ike" else {}
                r = run(model, dev, method, params_for(method, {**overrides, **extra}), args.layer)
                sweep.append({"overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                              "dev_score": score(r["post"]), "dev": r["post"]})
                print(f"  dev {overrides}: {score(r['post']):.1f}", flush=True)
            best = max(sweep, key=lambda s: s["dev_score"])
            entry["sweep"] = sweep
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in best["overrides"].items()}
            entry["best"] = {"overrides": best["overrides"],
                             "counterfact": run(model, counterfact, method, params_for(method, overrides), args.layer)}
            print(f"  best {best['overrides']}: CF {entry['best']['counterfact']['post']}", flush=True)
        # the performance targets' median: every edit made at the defaults (CounterFact and zsRE)
        every = entry["counterfact"]["edit_s"] + entry["zsre"]["edit_s"]
        entry["defaults_median_edit_s"], entry["defaults_edits"] = statistics.median(every), len(every)
        entry["seconds"] = time.perf_counter() - t
        out["methods"][method] = entry
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    print_table(out)
    markdown_table(out)
    print(f"wrote {args.out}")


def print_table(out: dict) -> None:
    cols = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score")
    z = ("easyedit.reliability", "easyedit.generality", "easyedit.locality")
    print(f"\n{'method':<22}{'ES':>7}{'PS':>7}{'NS':>7} |{'rel':>7}{'gen':>7}{'loc':>7} | s/edit  params")
    for name, e in out["methods"].items():
        cf, zs = e["counterfact"], e["zsre"]
        print(f"{name + ' (defaults)':<22}" + "".join(f"{cf['post'].get(c, float('nan')):7.1f}" for c in cols)
              + " |" + "".join(f"{zs['post'].get(c, float('nan')):7.1f}" for c in z)
              + f" | {e.get('defaults_median_edit_s') or 0:.2f}  {cf['parameters_changed']}")
        if "best" in e:
            b = e["best"]["counterfact"]
            print(f"{name + ' (dev best)':<22}" + "".join(f"{b['post'].get(c, float('nan')):7.1f}" for c in cols)
                  + f" |{'':21} | {b['median_edit_s'] or 0:.2f}  {e['best']['overrides']}")


def markdown_table(out: dict) -> None:
    """The README's table: every method at its defaults (and the development sweep's best), ROME's
    row from edit.json, the published numbers beside."""
    cf = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score")
    zs = ("easyedit.reliability", "easyedit.generality", "easyedit.locality")
    f = lambda d, keys: " | ".join(f"{d[k]:.1f}" if k in d else "–" for k in keys)
    print("| method | settings | ES | PS | NS | zsRE rel. | gen. | loc. | s/edit | numbers changed | published |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rome = ROOT / "benchmarks" / "results" / "edit.json"
    if "rome" not in out["methods"] and rome.exists() and json.loads(rome.read_text()).get("rome"):
        r = json.loads(rome.read_text())["rome"]
        print(f"| ROME (×{r['n']}, edit_bench) | defaults, layer {r['layer']} | {f(r['post'], cf)} | – | – | – | "
              f"{r['median_total_s']:.1f} | {576 * 1536} (rank one) | {PUBLISHED['rome']} |")
    for name, e in out["methods"].items():
        c, z = e["counterfact"], e["zsre"]
        print(f"| {name} | defaults | {f(c['post'], cf)} | {f(z['post'], zs)} | {e.get('defaults_median_edit_s', 0):.1f} | "
              f"{c['parameters_changed']:.0f} | {e['published']} |")
        if "best" in e:
            b = e["best"]["counterfact"]
            print(f"| {name} | dev best {e['best']['overrides']} | {f(b['post'], cf)} | – | – | – | "
                  f"{b['median_edit_s'] or 0:.1f} | {b['parameters_changed']:.0f} | |")
    n = out["methods"] and next(iter(out["methods"].values()))
    if n:
        print(f"\nunedited: CounterFact {f(n['counterfact']['pre'], cf)}; zsRE {f(n['zsre']['pre'], zs)}")


if __name__ == "__main__":
    main()
