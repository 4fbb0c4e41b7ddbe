"""`tracelab demo`: the main job on the embedded model, end to end.

predict → trace a built-in fact → edit it at the traced layer (ROME) → before/after on the
prompt, a paraphrase and a neighbour → undo (bit for bit) → report and paper figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._common import add_model_options, load

DEMO_PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The capital of Australia is",
]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded model")
    p.add_argument("--facts", type=int, default=3, help="how many built-in facts to predict (default 3)")
    p.add_argument("--samples", type=int, default=5, help="noise samples for the trace (default 5)")
    p.add_argument("--out", default="tracelab-demo", help="folder for the trace, report and figures")
    p.add_argument("--no-figures", action="store_true", help="skip the paper figures (the slowest step)")
    add_model_options(p)
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}")
    return time.perf_counter()


def run(args) -> int:
    import torch

    from ..data import builtin_facts
    from ..editing import edit
    from ..tracing import trace
    from ..viz.compare import comparison_rows, snapshot
    from ..viz.paper import EIFFEL, write_figures
    from ..viz.report import write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load(args)
    print(model)

    _step("predict")
    for prompt in DEMO_PROMPTS + [f["prompt"] for f in builtin_facts()[: args.facts]]:
        top = ", ".join(f"{token!r} {prob:.2f}" for token, prob in model.predict(prompt, k=3))
        print(f"  {prompt!r:<50} -> {top}")

    fact = EIFFEL
    t = _step(f"trace {fact['subject']!r} ({args.samples} noise samples, 3 kinds)")
    result = trace(model, fact["prompt"], fact["subject"], samples=args.samples, dtype="bfloat16")
    layer = result.peak("mlp")
    figures = [result.save(out / "trace.html"), result.save(out / "trace.pdf")]
    print(f"  target {result.target!r}: p_clean {result.p_clean:.3f}, p_corrupted {result.p_corrupted:.3f}; "
          f"MLP peak at the last subject token: layer {layer}  ({time.perf_counter() - t:.0f} s)")
    print(f"  heatmaps: {', '.join(map(str, figures))}")

    t = _step(f"edit at the traced layer {layer}: {fact['subject']} -> {fact['new_target']} (ROME)")
    prompts = {k: fact[k] for k in ("prompt", "paraphrase", "neighbour") if k in fact}
    targets = [result.target, fact["new_target"]]
    before_weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    before = snapshot(model, prompts, targets)
    change = edit(model, subject=fact["subject"], prompt=fact["prompt"].replace(fact["subject"], "{}", 1),
                  target=fact["new_target"], layer=layer)
    try:
        after = snapshot(model, prompts, targets)
    finally:
        change.undo()
    for row in comparison_rows(before, after):
        print(f"  {row['prompt']:<10} {row['text']!r}\n{'':13}before: {row['top before']}\n{'':13}after:  {row['top after']}")
    restored = all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before_weights.items())
    print(f"  undo: weights restored bit for bit: {restored}  ({time.perf_counter() - t:.0f} s)")
    if not restored:
        raise RuntimeError("undo did not restore the weights bit for bit")

    t = _step("report")
    print(f"  {write_report(model, out / 'report.html', progress=False)}  ({time.perf_counter() - t:.0f} s)")
    if not args.no_figures:
        t = _step("paper figures (PDF, SVG, PNG)")
        paths = write_figures(model, out / "figures", progress=False)
        print(f"  {len(paths)} files in {out / 'figures'}  ({time.perf_counter() - t:.0f} s)")
    return 0
