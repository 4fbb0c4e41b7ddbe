"""T-Patcher's memory of earlier edits (the paper's `update_memory`) in a long stream.

    $ python benchmarks/tpatcher_memory_bench.py        # ~2 min

Every T-Patcher edit keeps its new neurons silent on the MLP inputs of all earlier edits' prompt +
answer tokens. Before: each edit ran those earlier edits' prompts through the model again, so the
k-th edit of a stream paid k forwards and a stream of T paid O(T²). After: each earlier edit's
states are computed once and kept while the weights below the patch layer stay. Measured at the
last layer (the default) with 100 and 500 earlier zsRE edits: the states of all of them from
scratch (what every edit paid before) against one more edit's (what it pays now); both give the
same states. Writes benchmarks/results/tpatcher_memory.json; run alone.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import torch

from edit_bench import ROOT
from host import host_record
from lifelong_bench import ZSRE


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.editing.methods import tpatcher
    from tracelab.evaluation import read_records

    model = tl.load_model()
    layer = model.n_layers - 1
    zsre = read_records(ZSRE)
    requests = [r for record in zsre[199:699] for r in record.requests]      # lifelong_bench's T = 500 stream
    new = zsre[198].requests[0]                                               # an edit outside it
    out = {"model": model.name, "layer": layer, "host": host_record(model), "runs": {}}
    patch = SimpleNamespace(kind="hook", target=model.mlp(layer).name, hash_after="")  # an edit's neurons, at `layer`
    for earlier in (100, 500):
        edits = [SimpleNamespace(method="t-patcher", layers=[layer], changes=[patch], requests=[r])
                 for r in requests[:earlier]]
        ctx = SimpleNamespace(journal=SimpleNamespace(edits=edits))
        tpatcher._EDITED.clear()
        t = time.perf_counter()
        everything = tpatcher.edited_states(model, layer, ctx, new)       # all from scratch: every edit, before
        scratch = time.perf_counter() - t
        ctx.journal.edits = edits[:-1]
        tpatcher._EDITED.clear()
        tpatcher.edited_states(model, layer, ctx, new)                     # the stream so far, kept
        ctx.journal.edits = edits
        t = time.perf_counter()
        kept = tpatcher.edited_states(model, layer, ctx, new)             # one more edit's states: now
        incremental = time.perf_counter() - t
        torch.testing.assert_close(kept, everything, atol=1e-4, rtol=0)
        out["runs"][str(earlier)] = {"states": len(kept), "before_s": scratch, "after_s": incremental,
                                     "ratio": scratch / incremental}
        print(f"{earlier} earlier edits ({len(kept)} states): before {scratch:.2f} s, after {incremental:.3f} s "
              f"per edit ({scratch / incremental:.0f}x)", flush=True)
    path = ROOT / "benchmarks" / "results" / "tpatcher_memory.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
