"""WISE's router: one decision per row (as shipped) against one per position, on a 10-edit zsRE stream.

    $ python benchmarks/wise_routing_bench.py        # ~6 min

The question: WISE's held-out perplexity rises early in a stream (50.7 → 63.5 after 10 edits),
while locality prompts mostly stay. The shipped router scores a row by the *largest* distance
‖σ(W'k_t) − σ(Wk_t)‖ over its positions and sends the whole row to the side memory when that passes
the edit's threshold, so a long text (the held-out paragraphs, ~155 tokens a row) has many chances
to pass. Two alternatives, swapped in for `WiseEdit.forward_group` at scoring time only (training
does not use it, so the edits are the same):

    rows       route x when max_t Δ_t ≥ τ                (shipped)
    positions  route position t when Δ_t ≥ τ
    latch      route position t when max_{s ≤ t} Δ_s ≥ τ  (causal: once passed, stays routed)

The stream: zsRE records 199–208, the T = 500 stream's first ten, scored at T = 1 and 10 as
`lifelong_bench.py` scores them. Writes benchmarks/results/wise_routing.json; run alone.
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
from lifelong_bench import records

OUT = ROOT / "benchmarks" / "results" / "wise_routing.json"


def routed_per_position(latch: bool):
    """A `forward_group` that routes each position (`latch`: each position from the first that passes)."""
    from tracelab.editing.methods import wise

    def forward_group(cls, k, v, members, cache):
        if "memories" not in cache:
            cache["memories"] = cls.memories(members)
        act, mask = wise.activation(members[0].settings["activation"]), cache.get("attention_mask")
        out, best = v, torch.zeros(v.shape[:2], device=v.device)
        for delta, threshold in cache["memories"]:
            side, distance = wise.position_distances(k, v, delta.to(k.device), act, mask)        # [batch, pos]
            if latch:
                distance = distance.cummax(-1).values
            take = (distance >= threshold) & (distance > best)
            out = torch.where(take[..., None], side.to(v.dtype), out)
            best = torch.where(take, distance, best)
        return out

    return classmethod(forward_group)


def routing(name: str):
    """WiseEdit.forward_group swapped for `name`'s routing inside the block ("rows": the shipped one)."""
    from tracelab.editing.methods.wise import WiseEdit

    if name == "rows":
        return nullcontext()
    return patch.object(WiseEdit, "forward_group", routed_per_position(latch=name == "latch"))


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("TRACELAB_DATA", str(ROOT.parent / "shared" / "data"))
    import tracelab as tl
    from tracelab.editing.guard import held_out_texts
    from tracelab.models.text import perplexity

    model = tl.load_model()
    cases, texts = records(model, "zsre", 10, 199), held_out_texts()
    out = {"model": model.name, "host": host_record(model), "records": "zsRE 199–208", "runs": {}}
    print(f"{'routing':<10}{'T':>4}{'reliability':>13}{'generality':>12}{'locality':>10}{'perplexity':>12}")
    for name in ("rows", "positions", "latch"):
        t = time.perf_counter()
        with routing(name):
            res = tl.evaluate(model, cases, "wise", mode="sequential", checkpoints=[1, 10], progress=False,
                              at_checkpoint=lambda m: {"perplexity": perplexity(m, texts)})
        out["runs"][name] = {"checkpoints": res.meta["checkpoints"], "before": res.meta["before"],
                             "seconds": time.perf_counter() - t}
        for T, c in res.meta["checkpoints"].items():
            print(f"{name:<10}{T:>4}{c['easyedit.reliability']:13.1f}{c['easyedit.generality']:12.1f}"
                  f"{c['easyedit.locality']:10.1f}{c['perplexity']:12.2f}", flush=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
