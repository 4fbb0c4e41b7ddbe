"""T-Patcher's patches at one MLP as one hook (one matmul) against one hook per edit.

    $ python benchmarks/tpatcher_group_bench.py        # ~2 min

A T-Patcher stream adds a patch (a few neurons) per edit at the last MLP. Before: each patch was its
own hook, so a forward pass after T edits ran T small matmuls and T Python hooks, in every training
step of the next edit and in every scored prompt. After: `PatchNeurons.forward_group` stacks them
into one wider layer. Measured in one run, on the embedded model, with N patches of 2 neurons each
(the T = 500 stream's median) that stay silent (bias −100: the model is unchanged, so each edit
trains the same steps either way): the seconds of a forward of one zsRE prompt (the fastest of 20;
a stream's checkpoint scores case by case) and of one T-Patcher edit (memory set read beforehand),
with the patches as separate hooks (`shared = False`, how they ran before) and as one group. Both
give the same logits (on 64 prompts). Writes benchmarks/results/tpatcher_group.json; run alone.
"""

from __future__ import annotations

import json
import os
import time

import torch

from edit_bench import ROOT
from host import host_record
from lifelong_bench import ZSRE


def silent_patches(model, n: int, neurons: int = 2) -> list:
    from tracelab.editing.methods.tpatcher import PatchNeurons

    g = torch.Generator().manual_seed(0)
    patches = []
    for _ in range(n):
        p = PatchNeurons(model.d_model, neurons)
        p.keys.data = torch.randn(neurons, model.d_model, generator=g) / model.d_model
        p.bias.data.fill_(-100.0)
        p.values.data = torch.randn(neurons, model.d_model, generator=g)
        patches.append(p)
    return patches


def timed(fn, repeats: int) -> float:
    """The fewest seconds of `repeats` calls of `fn` (the least disturbed)."""
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t)
    return min(seconds)


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ.setdefault("TRACELAB_DATA", str(ROOT.parent / "shared" / "data"))  # the memory set's prompts
    import tracelab as tl
    from tracelab.editing import TPatcherParams
    from tracelab.editing.methods.tpatcher import PatchNeurons
    from tracelab.editing.patches import attach
    from tracelab.evaluation import read_records

    model = tl.load_model()
    layer = model.n_layers - 1
    zsre = read_records(ZSRE)
    prompts = [r.requests[0].text for r in zsre[199:263]]
    request = zsre[198].requests[0]
    params = TPatcherParams()
    tl.edit(model, request, method="t-patcher", params=params, progress=False).undo()   # reads the memory set once
    out = {"model": model.name, "layer": layer, "host": host_record(model), "prompts": len(prompts), "runs": {}}
    for n in (0, 100, 500):
        patches = silent_patches(model, n)
        row, logits = {}, {}
        for how, shared in (("hooks", False), ("group", True)):
            PatchNeurons.shared = shared
            handles = [attach(model, model.mlp(layer), p) for p in patches]
            try:
                logits[how] = model.next_token_logits(prompts)
                row[f"forward_s_{how}"] = timed(lambda: model.next_token_logits(prompts[0]), 20)
                t = time.perf_counter()
                edit = tl.edit(model, request, method="t-patcher", params=params, progress=False)
                row[f"edit_s_{how}"], row[f"steps_{how}"] = time.perf_counter() - t, edit.info["steps"]
                edit.undo()
            finally:
                for h in handles:
                    h.remove()
                PatchNeurons.shared = True
        torch.testing.assert_close(logits["group"], logits["hooks"], atol=1e-4, rtol=0)
        row.update(forward_ratio=row["forward_s_hooks"] / row["forward_s_group"],
                   edit_ratio=row["edit_s_hooks"] / row["edit_s_group"])
        out["runs"][str(n)] = row
        print(f"{n:4d} patches: forward {row['forward_s_hooks'] * 1e3:.0f} → {row['forward_s_group'] * 1e3:.0f} ms "
              f"({row['forward_ratio']:.1f}x); edit {row['edit_s_hooks']:.1f} → {row['edit_s_group']:.1f} s "
              f"({row['edit_ratio']:.1f}x; {row['steps_hooks']} / {row['steps_group']} steps)", flush=True)
    path = ROOT / "benchmarks" / "results" / "tpatcher_group.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
