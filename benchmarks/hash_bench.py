"""The unedited-weights hash that checks key statistics before every ROME / MEMIT / AlphaEdit edit.

    $ python benchmarks/hash_bench.py                   # ~1 min

Before: per layer, every journal edit taken out (`journal.suspended`), then the embedding and
blocks 0..l hashed, once for each of MEMIT's layers 2–6 (the cost grows with the edits in the
journal). After: `weights_hashes`, one pass for all the layers, journal-changed weights hashed as
their first change found them. Measured with 0 and 20 FT-L edits in the journal; the two give the
same hashes. Writes benchmarks/results/hash.json; run alone.
"""

from __future__ import annotations

import json
import os
import time

import torch

from edit_bench import ROOT
from host import host_record

LAYERS = [2, 3, 4, 5, 6]
CITIES = ["Rome", "Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Berlin", "Madrid", "Vienna", "Dublin", "Athens", "Seoul",
          "Moscow", "Warsaw", "Lisbon", "Prague", "Havana", "Nairobi", "Ottawa", "Bangkok"]  # 20 edits, none a no-op


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from tracelab.editing import FTLParams, journal
    from tracelab.editing.toolkit.stats import _digests, _hashed_parameters, weights_hashes
    from tracelab.io import tensor_hash

    model = tl.load_model()

    def per_layer_suspended():  # the check as it was (3f13f02 and before)
        out = {}
        for l in LAYERS:
            with journal(model).suspended():
                embed, blocks = _hashed_parameters(model, l)
                out[l] = _digests(embed, blocks, [l], tensor_hash)[l]
        return out

    def timed(f, n=3):
        f()
        t0 = time.perf_counter()
        for _ in range(n):
            result = f()
        return (time.perf_counter() - t0) / n, result

    rows, edits = [], []
    for k in range(21):
        if k in (0, 20):
            before, old = timed(per_layer_suspended)
            after, new = timed(lambda: weights_hashes(model, LAYERS))
            rows.append({"edits_in_journal": k, "before_s": before, "after_s": after, "ratio": before / after,
                         "same_hashes": old == new})
            print(f"{k:>2} edits in the journal: before {before:.3f} s, after {after:.3f} s "
                  f"({before / after:.1f}x), same hashes: {old == new}")
        if k < 20:
            edits.append(tl.edit(model, subject=f"Town{k}", prompt="{} is in", target=CITIES[k], method="ft-l",
                                 layer=4, params=FTLParams(steps=1), progress=False))
    assert len(edits) == 20 and all(e.changes for e in edits)
    for e in reversed(edits):
        e.undo()
    out = ROOT / "benchmarks" / "results" / "hash.json"
    out.write_text(json.dumps({"layers": LAYERS, "rows": rows, "host": host_record(model)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
