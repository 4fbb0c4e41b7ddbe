"""`tracelab trace` (one fact → heatmap figure + result) and `tracelab trace-dataset` (Figure 2).

    $ tracelab trace --prompt "The Eiffel Tower is located in the city of" \\
          --subject "The Eiffel Tower" --out figures/eiffel.pdf
    $ tracelab trace-dataset --facts /work/shared/data/known_1000.json --limit 50 --out traces/
"""

from __future__ import annotations

from pathlib import Path

from ..tracing.names import KINDS
from ._common import add_model_options, load


def _trace_options(p) -> None:
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="what to restore (default: all three)")
    p.add_argument("--samples", type=int, default=10, help="noise samples per cell (default 10)")
    p.add_argument("--window", type=int, default=10, help="MLP/attention window in layers (default 10)")
    p.add_argument("--metric", default="prob", choices=("prob", "log_prob", "logit_diff"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-scale", type=float, default=3.0, help="noise std in units of the subject-embedding std")
    p.add_argument("--compute-dtype", default=None, help="autocast dtype for tracing: auto (bfloat16 where the device has it natively), bfloat16, float16")
    p.add_argument("--engine", default="fast", choices=("fast", "naive"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("trace", help="causal trace of one fact: heatmaps of restored runs")
    p.add_argument("--prompt", required=True, help="prompt text, e.g. 'The Eiffel Tower is located in the city of'")
    p.add_argument("--subject", required=True, help="the subject as it appears in the prompt")
    p.add_argument("--target", default=None, help="answer text (default: the model's top-1 token)")
    p.add_argument("--corrupt-prompt", default=None, help="corrupt with this prompt instead of noise (same token count)")
    p.add_argument("--screen", type=int, default=None, help="attribution screen: run only the top-k cells per kind exactly")
    p.add_argument("--out", required=True, help="figure (.pdf/.svg/.png/.html); the result is saved beside it")
    _trace_options(p)
    p.set_defaults(func=run_trace)

    d = subparsers.add_parser("trace-dataset", help="trace known facts and average by token class (Figure 2)")
    d.add_argument("--facts", default=None, help="JSON list of known_1000-style records (default: built-in facts)")
    d.add_argument("--limit", type=int, default=None, help="trace at most N facts the model knows")
    d.add_argument("--out", required=True, help="directory: per-fact results (resumable), average.* and figures")
    _trace_options(d)
    d.set_defaults(func=run_dataset)


def _kwargs(args) -> dict:
    from ..tracing import GaussianNoise

    return dict(kinds=tuple(args.kinds), samples=args.samples, window=args.window, metric=args.metric,
                seed=args.seed, dtype=args.compute_dtype, engine=args.engine,
                corruption=GaussianNoise(scale=args.noise_scale))


def run_trace(args) -> int:
    from ..tracing import TokenReplace, trace
    from ..viz.export import FORMATS

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {out} must end in one of {FORMATS}")
    model = load(args)
    kwargs = _kwargs(args)
    if args.corrupt_prompt:
        kwargs["corruption"] = TokenReplace(args.corrupt_prompt)
    result = trace(model, args.prompt, args.subject, args.target, screen=args.screen,
                   progress=not args.quiet, **kwargs)
    result.save(out)
    stem = result.save(out.with_suffix(""))
    print(f"p({result.target!r}) clean {result.p_clean:.3f}, corrupted {result.p_corrupted:.3f}")
    for kind in result.kinds:
        print(f"  peak {kind:<5} at last subject token: layer {result.peak(kind)}")
    print(f"wrote {out} and {stem}.safetensors/.json")
    return 0


def run_dataset(args) -> int:
    from ..tracing import trace_dataset

    model = load(args)
    if args.facts is None:
        from ..data import builtin_facts

        facts = builtin_facts()
    else:
        facts = args.facts
    out = Path(args.out)
    average = trace_dataset(model, facts, out, limit=args.limit, progress=not args.quiet, **_kwargs(args))
    stem = average.save(out / "average")
    average.save(out / "average.pdf")
    print(f"traced {average.n_facts} facts ({average.skipped} the model gets wrong were skipped)")
    for kind in average.curves:
        mean = average.mean(kind)
        row = {name: int(mean[i].nan_to_num(-1e9).argmax()) for i, name in enumerate(average.classes)
               if not mean[i].isnan().all()}
        print(f"  {kind:<5} peak layer by token class: {row}")
    print(f"wrote {stem}.safetensors/.json, {out / 'average.pdf'} and per-fact results in {out}")
    return 0
