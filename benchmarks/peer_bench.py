"""tracelab against its peers on one activation-patching grid: TransformerLens and nnsight.

    $ python benchmarks/peer_bench.py [--rounds 3]

The grid: restore the clean residual stream at every (layer, token) into the corrupted run of a
TokenReplace pair (same token count, another subject) on the embedded model, score P(target) at
the last position. Peers, each as its users write it:

- TransformerLens 4: `patching.get_act_patch_resid_pre(bridge, corrupted, clean_cache, metric)`
  on a `TransformerBridge` booted on the model (one forward per cell, hooks on `resid_pre`).
- nnsight 0.8, the tutorials' loop: one clean trace saving every layer's output, then one
  `TransformersModel.trace` per cell writing the clean state into the layer's output.
- tracelab: `tl.trace(..., kinds="resid", corruption=TokenReplace(...))` on the plain model,
  through the bridge and through the nnsight object (each wrapper on its own copy of the weights).

TransformerLens's resid_pre of layer l + 1 is tracelab's resid (block output) of layer l, so the
values are compared on those cells (they must agree to 1e-5). Every run is timed once per round,
in turn; times are medians over rounds and each ratio is the median of per-round ratios. Prints a
table; writes benchmarks/results/peers.json. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from host import host_record

RESULTS = Path(__file__).resolve().parent / "results" / "peers.json"
PAIRS = [("The Eiffel Tower is located in the city of", "The Eiffel Tower", "The Colosseum is located in the city of"),
         ("The Colosseum is in the city of", "The Colosseum", "The Eiffel Tower is in the city of"),
         ("The Space Needle is in the city of", "The Space Needle", "The Big Ben is in the city of")]


def pick_pair(model):
    """The first (prompt, subject, corrupt prompt) whose two prompts have the same token count."""
    for prompt, subject, corrupt in PAIRS:
        if len(model.tokens(prompt)) == len(model.tokens(corrupt)):
            return prompt, subject, corrupt
    raise RuntimeError("no prompt pair of equal token counts for this tokenizer")


def boot_bridge(model):
    from transformer_lens.model_bridge import TransformerBridge

    from tracelab.models.loading import _embedded_dir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(str(_embedded_dir()), hf_model=model.hf, tokenizer=model.tokenizer)


def transformer_lens_grid(bridge, clean, corrupt, target) -> torch.Tensor:
    """`[n_layers, pos]` P(target) with resid_pre restored, TransformerLens's own patching."""
    from transformer_lens import patching

    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        metric = lambda logits: logits[0, -1].float().softmax(-1)[target]  # noqa: E731
        return patching.get_act_patch_resid_pre(bridge, corrupt, cache, metric).float()


def nnsight_loop_grid(lm, model, clean, corrupt, target) -> torch.Tensor:
    """`[n_layers, pos]` P(target) with the block output restored, one nnsight trace per cell."""
    import nnsight

    layers = lm.model.layers
    with torch.no_grad():
        with lm.trace(clean):
            states = nnsight.save([])  # nnsight 0.8: only saved values leave the trace body
            for l in range(model.n_layers):
                states.append(layers[l].output)
        states = [s[0] if isinstance(s, tuple) else s for s in states]
        grid = torch.zeros(model.n_layers, clean.shape[1])
        for l in range(model.n_layers):
            for t in range(clean.shape[1]):
                with lm.trace(corrupt):
                    out = layers[l].output
                    h = out[0] if isinstance(out, tuple) else out
                    h[:, t] = states[l][:, t]
                    p = lm.output.logits[0, -1].softmax(-1)[target].save()
                grid[l, t] = float(p)
    return grid


def tracelab_grid(obj, prompt, subject, corrupt_prompt) -> torch.Tensor:
    import tracelab as tl

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to a slower engine would warn: fail instead
        r = tl.trace(obj, prompt, subject, kinds="resid", corruption=tl.TokenReplace(corrupt_prompt), progress=False)
    return r.scores["resid"][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import tracelab as tl
    from nnsight import TransformersModel

    plain, bridged, wrapped = tl.load_model(), tl.load_model(), tl.load_model()
    bridge = boot_bridge(bridged)
    lm = TransformersModel(wrapped.hf, tokenizer=wrapped.tokenizer, task="text-generation")
    prompt, subject, corrupt_prompt = pick_pair(plain)
    clean, corrupt = plain.tokenize(prompt)["input_ids"], plain.tokenize(corrupt_prompt)["input_ids"]
    target = int(plain.next_token_logits(prompt)[0].argmax())
    runs = {
        "TransformerLens get_act_patch_resid_pre (bridge)": lambda: transformer_lens_grid(bridge, clean, corrupt, target),
        "nnsight, one trace per cell (TransformersModel)": lambda: nnsight_loop_grid(lm, wrapped, clean, corrupt, target),
        "tracelab, plain model": lambda: tracelab_grid(plain, prompt, subject, corrupt_prompt),
        "tracelab, through the bridge": lambda: tracelab_grid(bridge, prompt, subject, corrupt_prompt),
        "tracelab, through the TransformersModel": lambda: tracelab_grid(lm, prompt, subject, corrupt_prompt),
    }
    out = {"prompt": prompt, "corrupt_prompt": corrupt_prompt, "target": plain.tokenizer.decode([target]),
           "n_tokens": clean.shape[1], "n_layers": plain.n_layers, "rounds": args.rounds,
           "host_before": host_record(plain), "seconds": {name: [] for name in runs}}
    grids = {}
    for r in range(args.rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            grids[name] = run()
            out["seconds"][name].append(time.perf_counter() - t)
            print(f"round {r + 1}: {name}: {out['seconds'][name][-1]:.2f}s", flush=True)
    out["host_after"] = host_record(plain)
    tl_name, nn_name = list(runs)[:2]
    # TransformerLens resid_pre[l + 1] = block output l; nnsight and tracelab both restore block outputs
    reference = grids["tracelab, plain model"]
    out["max_abs_difference_vs_tracelab_plain"] = {
        tl_name: float((grids[tl_name][1:] - reference[:-1]).abs().max()),
        **{name: float((grids[name] - reference).abs().max()) for name in list(runs)[1:]}}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(out["seconds"][a], out["seconds"][b]))  # noqa: E731
    out["speedups"] = {f"{name} vs {peer}": ratio(peer, name) for name in list(runs)[2:] for peer in (tl_name, nn_name)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"\n{'run':<52}{'s (median)':>11}{'max |Δ|':>10}")
    for name in runs:
        print(f"{name:<52}{statistics.median(out['seconds'][name]):>11.2f}"
              f"{out['max_abs_difference_vs_tracelab_plain'].get(name, 0.0):>10.1e}")
    for k, v in out["speedups"].items():
        print(f"  {k}: {v:.1f}×")
    h = out["host_before"]
    print(f"grid {plain.n_layers} layers × {clean.shape[1]} tokens; host {h['cpu']} ({h['bf16_matmul_isa']}), "
          f"matmul GFLOP/s {h['matmul_gflops']} → {out['host_after']['matmul_gflops']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
