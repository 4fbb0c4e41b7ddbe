"""Learned editors: trained here on the training data, then judged on records they never saw.

    $ python benchmarks/learned_bench.py                                   # MEND on zsRE 0–499, 600 steps at most
    $ python benchmarks/learned_bench.py --steps 200 --set lr=1e-4 --name mend-lr1e-4 --merge
    $ python benchmarks/learned_bench.py --method serac --steps 150 --val-every 25 --patience 3 --merge

Per editor: `tl.train_editor` on zsRE records 0–499 of zsre-sample.json (50 of them held out for
validation, early stopping), its training time and validation curve; then single edits
(`tl.evaluate`, edit / score / undo) on zsRE records 500.. (EasyEdit's reliability / generality /
locality) and on the known CounterFact records of the edit sample (edit_bench's: ROME's efficacy /
paraphrase / neighbourhood), seconds per edit, milliseconds per scored prompt with one edit applied
against the base model (the inference overhead), and for SERAC its scope classifier against TF-IDF
cosine. Writes benchmarks/results/learned.json; run alone.
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
    p.add_argument("--data", default=str(ZSRE), help="training records (default: zsRE, the first --limit)")
    p.add_argument("--limit", type=int, default=500)
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
    meta = tl.train_editor(args.method, model, args.data, limit=args.limit, steps=args.steps, val_every=args.val_every,
                           patience=args.patience, params=params)
    trained_s = time.perf_counter() - t
    print(f"trained in {trained_s:.0f}s ({meta['step']} steps); best {meta['best']}", flush=True)
    run = {"method": args.method, "data": Path(args.data).name, "limit": args.limit, "host": out["host"],
           "params": params.to_dict(), "overrides": overrides, "steps": meta["step"],
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
    run["prompt_ms"] = prompt_ms(tl, model, args.method, zsre, kwargs)
    print(f"ms per scored prompt: {run['prompt_ms']}", flush=True)
    if args.method == "serac":
        run["scope"] = scope_report(tl, model, meta, args.data, args.limit, {"zsre": zsre, "counterfact": known[:args.cf_n]})
        print(f"scope classifier: {json.dumps(run['scope'])}", flush=True)
    runs[args.name or args.method] = run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def prompt_ms(tl, model, method: str, records, kwargs: dict) -> dict:
    """Milliseconds to score one prompt (next-token logits, one at a time) on the base model and
    with one edit of `method` applied: the inference overhead (SERAC: routing and its classifier)."""
    prompts = [x for r in records[1:21] for x in (r.request.text, *r.paraphrases[:1], *(n for n, _ in r.neighbours[:1]))]

    def timed() -> float:
        model.next_token_logits(prompts[:2])
        t = time.perf_counter()
        for x in prompts:
            model.next_token_logits([x])
        return 1000 * (time.perf_counter() - t) / len(prompts)

    base = timed()
    e = tl.edit(model, records[0].request, method=method, progress=False, **kwargs)
    edited = timed()
    e.undo()
    return {"prompts": len(prompts), "base": round(base, 1), "edited": round(edited, 1)}


def scope_report(tl, model, meta: dict, data: str, limit: int, suites: dict) -> dict:
    """SERAC's scope classifier (the trained one, on the base model's pooled states) against TF-IDF
    cosine (its threshold fitted on the training records): per suite, the share of paraphrases
    judged in scope and of locality/neighbourhood prompts judged out of scope, each edit alone."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from tracelab.editing.checkpoints import read_checkpoint
    from tracelab.editing.methods.serac import SeracEditor, SeracParams, pooled_states
    from tracelab.evaluation import read_records

    tensors, saved = read_checkpoint(meta["path"])
    editor = SeracEditor(model, SeracParams(**saved["params"]))
    editor.load_state_dict(tensors)
    train = read_records(data, limit)
    triples = [(r.request.text, r.paraphrases[0], r.neighbours[0][0]) for r in train if r.paraphrases and r.neighbours]
    tfidf = TfidfVectorizer().fit([x for t in triples for x in t])

    def cosines(pairs):
        a, b = tfidf.transform([p for p, _ in pairs]), tfidf.transform([q for _, q in pairs])
        return torch.tensor(a.multiply(b).sum(1)).flatten()

    pos, neg = cosines([(p, q) for p, q, _ in triples]), cosines([(p, n) for p, _, n in triples])
    grid = torch.linspace(0, 1, 101)
    balanced = torch.stack([((pos >= g).float().mean() + (neg < g).float().mean()) / 2 for g in grid])
    threshold = float(grid[int(balanced.argmax())])
    out = {"tfidf_threshold": threshold}
    for suite, records in suites.items():
        rows = [(r.request.text, q, n) for r in records for q in r.paraphrases[:2] for n, _ in r.neighbours[:2]]
        edits, queries, others = zip(*rows)
        with torch.no_grad():
            z = [pooled_states(model, editor.embed_layer, list(t)) for t in (edits, queries, others)]
            p_in = torch.sigmoid(editor.scope_logits(z[0], z[1]).diagonal())
            p_out = torch.sigmoid(editor.scope_logits(z[0], z[2]).diagonal())
        t_in, t_out = cosines(list(zip(edits, queries))), cosines(list(zip(edits, others)))
        out[suite] = {"pairs": len(rows),
                      "learned": {"paraphrase_in": float((p_in >= editor.threshold).float().mean()),
                                  "locality_out": float((p_out < editor.threshold).float().mean())},
                      "tfidf": {"paraphrase_in": float((t_in >= threshold).float().mean()),
                                "locality_out": float((t_out < threshold).float().mean())}}
    return out


if __name__ == "__main__":
    main()
