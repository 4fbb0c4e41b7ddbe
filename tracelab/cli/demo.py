"""`tracelab demo`: the main job on the embedded model, end to end.

predict → trace a built-in fact → edit it at the traced layer (the default method) → before/after
on the prompt, a paraphrase and a neighbour → re-trace → undo (bit for bit) → report and paper
figures, which reuse that one trace and edit (`viz.story`).
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
    from ..editing import registry
    from ..viz.compare import comparison_rows
    from ..viz.paper import write_figures
    from ..viz.report import write_report
    from ..viz.story import edit_story, eiffel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load(args)
    print(model)

    _step("predict")
    for prompt in DEMO_PROMPTS + [f["prompt"] for f in builtin_facts()[: args.facts]]:
        top = ", ".join(f"{token!r} {prob:.2f}" for token, prob in model.predict(prompt, k=3))
        print(f"  {prompt!r:<50} -> {top}")

    fact = eiffel()
    t = _step(f"trace {fact['subject']!r} ({args.samples} noise samples, 3 kinds), edit it at the traced layer, "
              "re-trace, undo")
    before_weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    story = edit_story(model, fact, samples=args.samples, dtype="auto")  # run once: report and figures reuse it
    r = story.trace
    figures = [r.save(out / "trace.html"), r.save(out / "trace.pdf")]
    print(f"  target {r.target!r}: p_clean {r.p_clean:.3f}, p_corrupted {r.p_corrupted:.3f}; "
          f"MLP peak at the last subject token: layer {story.layer}")
    print(f"  heatmaps: {', '.join(map(str, figures))}")
    print(f"  {registry.get(story.method).title} edit at layer {story.layer}: {fact['subject']} -> {story.new_target}")
    for row in comparison_rows(story.before, story.after):
        print(f"  {row['prompt']:<10} {row['text']!r}\n{'':13}before: {row['top before']}\n{'':13}after:  {row['top after']}")
    restored = all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before_weights.items())
    print(f"  undo: weights restored bit for bit: {restored}  ({time.perf_counter() - t:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in story.seconds.items()) + ")")
    if not restored:
        raise RuntimeError("undo did not restore the weights bit for bit")

    t = _step("report")
    print(f"  {write_report(model, out / 'report.html', story=story)}  ({time.perf_counter() - t:.0f} s)")
    if not args.no_figures:
        t = _step("paper figures (PDF, SVG, PNG)")
        paths = write_figures(model, out / "figures", story=story, progress=False)
        print(f"  {len(paths)} files in {out / 'figures'}  ({time.perf_counter() - t:.0f} s)")
    return 0
