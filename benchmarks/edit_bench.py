"""Editing on the embedded model: ROME single edits, MEMIT mass edits, AlphaEdit/MEMIT sequences.

    $ python benchmarks/edit_bench.py            # full (see the sizes below), alone on the machine
    $ python benchmarks/edit_bench.py --quick    # smoke run, ~minutes
    $ python benchmarks/edit_bench.py --rome 50 --memit 100 --seq 100    # scaled down
    $ python benchmarks/edit_bench.py --rome 0 --memit 1000 --seq 0      # MEMIT-1000 alone
    $ python benchmarks/edit_bench.py --rome 0 --memit "" --seq-methods memit --merge  # one section, keep the rest

Records: ../shared/data/counterfact-edit-sample.json (EasyEdit flat CounterFact), kept when the
model's top-1 next token is the first token of the true answer ("known"), one per subject. If
fewer are known than a size asks for, the remaining records are taken from the unknown ones and
the table says how many were known. Prints a table and writes benchmarks/results/edit.json:
ES/PS/NS in both conventions (rome.* probability comparisons, easyedit.* token accuracy), time
per edit with its breakdown (k*, v*/z optimisation, solve), statistics time, peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT.parent / "shared" / "data" / "counterfact-edit-sample.json"
RESULTS = ROOT / "benchmarks" / "results" / "edit.json"
PUBLISHED = "ROME on GPT-2 XL (Meng et al. 2022, CounterFact): ES 100 / PS 96.4 / NS 75.4"


def known_records(model, limit_scan: int):
    """(known, unknown) records among the first `limit_scan`, one per subject. The split is cached
    (keyed by the weights' and the records file's hashes): the scan is minutes of forward passes."""
    from tracelab.editing.toolkit.stats import weights_hash
    from tracelab.evaluation import read_records
    from tracelab.models.loading import cache_dir

    recs = read_records(RECORDS, limit=limit_scan)
    records_hash = hashlib.sha256(RECORDS.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{weights_hash(model, model.n_layers - 1)} {records_hash} {limit_scan}".encode()).hexdigest()[:16]
    cached = cache_dir() / "bench" / f"known-{key}.json"
    if cached.exists():
        split = json.loads(cached.read_text())
        return [recs[i] for i in split["known"]], [recs[i] for i in split["unknown"]]
    split, seen = {"known": [], "unknown": []}, set()
    for i in range(0, len(recs), 64):
        chunk = recs[i:i + 64]
        top = model.next_token_logits([r.request.text for r in chunk]).argmax(-1).tolist()
        for j, (r, t) in enumerate(zip(chunk, top)):
            if r.request.subject in seen:
                continue
            seen.add(r.request.subject)
            first = model.target_ids(r.request.text, r.request.target_true)[0]
            split["known" if t == first else "unknown"].append(i + j)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(split))
    return [recs[i] for i in split["known"]], [recs[i] for i in split["unknown"]]


def take(known, unknown, n):
    return (known + unknown)[:n], min(n, len(known))


def summarise(rows, side="post"):
    keys = dict.fromkeys(k for r in rows for k in r[side])
    scale = {k: 100.0 if ("score" in k or k.startswith("easyedit")) else 1.0 for k in keys}
    return {k: scale[k] * statistics.mean(r[side][k] for r in rows if r[side].get(k) is not None)
            for k in keys if any(r[side].get(k) is not None for r in rows)}


def bench_rome(model, recs, layer, stats):
    from tracelab.editing import edit
    from tracelab.evaluation import score_record

    rows, times = [], []
    for rec in recs:
        pre, ref = score_record(model, rec)
        t = time.perf_counter()
        e = edit(model, rec.request, method="rome", layer=layer, stats=stats, progress=False)
        total = time.perf_counter() - t
        post, _ = score_record(model, rec, ref)
        e.undo()
        rows.append({"pre": pre, "post": post})
        times.append(dict(e.info.get("seconds", {}), total=total, steps=e.info.get("steps"), nll=e.info.get("nll"),
                          rounds=e.info.get("rounds", 1)))
    return rows, times


def bench_batch(model, recs, method, layers, stats, seq_batch=None, score_every=5):
    """One call (seq_batch None) or a sequence of calls of `seq_batch` requests; scores at the end
    (and every `score_every` batches for sequences) on all edits so far, with NS vs the unedited model."""
    from tracelab.editing import edit, journal
    from tracelab.evaluation import score_record

    pres = [score_record(model, r) for r in recs]
    size = seq_batch or len(recs)
    curve, t0 = [], time.perf_counter()
    edit_time = 0.0
    for b, i in enumerate(range(0, len(recs), size)):
        t = time.perf_counter()
        edit(model, [r.request for r in recs[i:i + size]], method=method, layers=layers, stats=stats, progress=False)
        edit_time += time.perf_counter() - t
        last = i + size >= len(recs)
        if last or (seq_batch and (b + 1) % score_every == 0):
            done = recs[:i + size]
            rows = [{"pre": p, "post": score_record(model, r, ref)[0]} for r, (p, ref) in zip(done, pres)]
            curve.append({"edits": len(done), **summarise(rows)})
    journal(model).undo_all()
    return rows, curve, edit_time, time.perf_counter() - t0


def save(out: dict, complete: bool = False) -> None:
    """Write what has been measured so far (a crash or a time limit keeps the finished sections)."""
    out["complete"] = complete
    out["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    path = Path(out["args"]["out"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes: --rome 5 --memit 10 --seq 20 --seq-batch 10")
    p.add_argument("--rome", type=int, default=200, help="ROME single edits (each undone)")
    p.add_argument("--memit", default="100,1000", help="MEMIT sizes, edited in one call each")
    p.add_argument("--seq", type=int, default=200, help="sequential edits for AlphaEdit and MEMIT")
    p.add_argument("--seq-batch", type=int, default=20)
    p.add_argument("--seq-methods", default="alphaedit,memit", help="methods run as sequences")
    p.add_argument("--merge", action="store_true", help="keep the sections of edit.json that this run skips")
    p.add_argument("--out", default=str(RESULTS), help="where the results go (default benchmarks/results/edit.json)")
    p.add_argument("--layer", type=int, default=4, help="ROME layer")
    p.add_argument("--layers", default="2-6", help="MEMIT/AlphaEdit layers A-B (inclusive)")
    p.add_argument("--stats-tokens", type=int, default=100_000)
    p.add_argument("--scan", type=int, default=10_000, help="records scanned for known facts")
    args = p.parse_args()
    if args.quick:
        args.rome, args.memit, args.seq, args.seq_batch, args.scan = 5, "10", 20, 10, 1500
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.editing import key_stats

    a, b = (int(x) for x in args.layers.split("-"))
    layers = list(range(a, b + 1))
    model = tl.load_model()
    out = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    out.update({"model": model.name, "args": vars(args), "published": PUBLISHED, "threads": torch.get_num_threads()})
    t = time.perf_counter()
    known, unknown = known_records(model, args.scan)
    out["known"] = {"scanned": args.scan, "known": len(known), "seconds": time.perf_counter() - t}
    print(f"{len(known)} known records of {args.scan} scanned ({out['known']['seconds']:.0f}s)")

    with tempfile.TemporaryDirectory() as tmp:  # statistics timed from scratch, then shared by all runs
        os.environ["TRACELAB_CACHE"] = tmp
        t = time.perf_counter()
        stats = key_stats(model, sorted(set(layers + [args.layer])), tokens=args.stats_tokens, progress=False)
        out["stats"] = {"layers": sorted(stats), "tokens": args.stats_tokens, "seconds": time.perf_counter() - t}
        print(f"stats: {len(stats)} layers × {args.stats_tokens} tokens in {out['stats']['seconds']:.0f}s")

        if not args.merge:
            out["rome"], out["memit"], out["sequential"] = None, [], {}
        out.setdefault("rome", None), out.setdefault("memit", []), out.setdefault("sequential", {})
        recs, n_known = take(known, unknown, args.rome)
        if recs:
            rows, times = bench_rome(model, recs, args.layer, stats[args.layer])
            failed = [{"subject": r.request.subject, "target": r.request.target, "steps": t["steps"], "nll": t["nll"],
                       "p_new": row["post"].get("prob_new"), "p_true": row["post"].get("prob_true")}
                      for r, row, t in zip(recs, rows, times) if not row["post"].get("rome.efficacy_score")]
            out["rome"] = {"n": len(recs), "known": n_known, "layer": args.layer, "pre": summarise(rows, "pre"),
                           "post": summarise(rows), "median_total_s": statistics.median(x["total"] for x in times),
                           "median_breakdown_s": {k: statistics.median(x.get(k, 0.0) for x in times)
                                                  for k in ("keys", "values", "solve", "verify")},
                           "mean_total_s": statistics.mean(x["total"] for x in times),
                           "rounds": {str(k): sum(x["rounds"] == k for x in times) for k in (1, 2, 3)},
                           "median_steps": statistics.median(x["steps"] for x in times), "efficacy_failures": failed}
            save(out)
            print(f"ROME ×{len(recs)}: {out['rome']['post']} median {out['rome']['median_total_s']:.1f}s")

        memit = {m["n"]: m for m in out.get("memit", [])}
        for n in (int(x) for x in args.memit.split(",") if x and int(x) > 0):
            recs, n_known = take(known, unknown, n)
            rows, _, edit_s, _ = bench_batch(model, recs, "memit", layers, {l: stats[l] for l in layers})
            memit[len(recs)] = {"n": len(recs), "known": n_known, "layers": layers, "edit_seconds": edit_s,
                                "pre": summarise(rows, "pre"), "post": summarise(rows)}
            out["memit"] = [memit[k] for k in sorted(memit)]
            save(out)
            print(f"MEMIT-{len(recs)}: {edit_s:.0f}s {memit[len(recs)]['post']}", flush=True)

        recs, n_known = take(known, unknown, args.seq)
        for method in args.seq_methods.split(",") if recs else ():
            rows, curve, edit_s, _ = bench_batch(model, recs, method, layers, {l: stats[l] for l in layers},
                                                 seq_batch=args.seq_batch)
            out["sequential"][method] = {"n": len(recs), "known": n_known, "batch": args.seq_batch,
                                         "edit_seconds": edit_s, "pre": summarise(rows, "pre"), "curve": curve}
            save(out)
            print(f"{method} sequential {len(recs)}/{args.seq_batch}: {curve[-1]}", flush=True)
    save(out, complete=True)
    print_table(out)
    print(f"wrote {args.out}")


def print_table(out: dict) -> None:
    cols = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score",
            "easyedit.reliability", "easyedit.generality", "easyedit.locality")
    print(f"\n{'run':<28}{'ES':>7}{'PS':>7}{'NS':>7}{'rel':>7}{'gen':>7}{'loc':>7}  time")
    def line(name, s, time_s):
        print(f"{name:<28}" + "".join(f"{s.get(c, float('nan')):7.1f}" for c in cols) + f"  {time_s}")
    if out["rome"]:
        line("unedited (ROME set)", out["rome"]["pre"], "")
        line(f"ROME ×{out['rome']['n']} (layer {out['rome']['layer']})", out["rome"]["post"],
             f"median {out['rome']['median_total_s']:.1f}s/edit {out['rome']['median_breakdown_s']}")
    for m in out["memit"]:
        line(f"MEMIT-{m['n']} one call", m["post"], f"{m['edit_seconds']:.0f}s")
    for method, s in out["sequential"].items():
        line(f"{method} {s['n']} seq /{s['batch']}", s["curve"][-1], f"{s['edit_seconds']:.0f}s; NS unedited "
             f"{s['pre'].get('rome.neighborhood_score', float('nan')):.1f}")
    print(f"stats {out['stats']['seconds']:.0f}s; peak RSS {out['peak_rss_GiB']:.2f} GiB; {out['published']}")


if __name__ == "__main__":
    main()
