"""`tracelab steer`: build a steering vector from contrast pairs, print unsteered vs steered text.

    $ tracelab steer --pairs sentiment --layer 10 --alpha -4 --prompt "I thought the movie was"
    $ tracelab steer --pairs my_pairs.csv --layer auto --alpha 4 --prompt "Dear team," --save-vector out/v
    $ tracelab steer --pairs sentiment --layer 10 --sweep figures/sentiment_sweep.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_options, load


def register(subparsers) -> None:
    p = subparsers.add_parser("steer", help="steer generations with a vector made from contrast pairs")
    p.add_argument("--pairs", required=True,
                   help="built-in set (sentiment, formality, factual) or a .json/.csv file of positive/negative pairs")
    p.add_argument("--method", default="caa", choices=("caa", "repe"), help="how to make the vector (default caa)")
    p.add_argument("--layer", default="auto", type=_layer,
                   help="layer to steer, or 'auto': best held-out RepE reading accuracy (default auto)")
    p.add_argument("--alpha", type=float, default=4.0, help="steering strength, negative for the other side (default 4)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt to continue (repeat for several; default: the built-in set's behaviour prompts)")
    p.add_argument("--positions", default="all", choices=("all", "after_prompt"), help="where to add the vector")
    p.add_argument("--norm-match", action="store_true", help="keep each steered residual at its unsteered norm")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--save-vector", default=None, help="save the vector here (.safetensors + .json)")
    p.add_argument("--sweep", default=None, help="also sweep alpha and write the curve figure here (.html/.pdf/.png/.svg)")
    p.add_argument("--alphas", default="-8,-4,-2,0,2,4,8", help="comma-separated alphas for --sweep")
    p.add_argument("--fluency-tokens", type=int, default=20, help="tokens generated per prompt and alpha to measure fluency (0: skip)")
    p.add_argument("--positive-words", default=None, help="for --sweep with your own pairs: comma-separated words")
    p.add_argument("--negative-words", default=None, help="for --sweep with your own pairs: comma-separated words")
    add_model_options(p)
    p.set_defaults(func=run)


def _layer(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index or 'auto', got {text!r}") from None


def _pairs_and_metric(args):
    from ..steering import CONTRAST_SETS, BehaviourMetric, contrast_set, load_pairs

    if args.pairs in CONTRAST_SETS:
        s = contrast_set(args.pairs)
        pairs, metric = s.pairs, s.behaviour
    else:
        pairs, metric = load_pairs(args.pairs), None
    if args.positive_words or args.negative_words:
        if not (args.positive_words and args.negative_words and args.prompt):
            raise ValueError("--positive-words needs --negative-words and at least one --prompt")
        metric = BehaviourMetric(args.prompt, [" " + w.strip() for w in args.positive_words.split(",")],
                                 [" " + w.strip() for w in args.negative_words.split(",")], name="custom words")
    return pairs, metric


def run(args) -> int:
    from ..steering import caa, generate, repe, sweep

    pairs, metric = _pairs_and_metric(args)
    prompts = args.prompt or (list(metric.prompts[:3]) if metric else None)
    if not prompts and not args.sweep:
        raise ValueError("give at least one --prompt to continue")
    if args.sweep:
        from ..viz.export import FORMATS, save_figure

        if metric is None:
            raise ValueError("--sweep needs a behaviour to measure: use a built-in set, or give "
                             "--positive-words, --negative-words and --prompt")
        if Path(args.sweep).suffix.lower() not in FORMATS:
            raise ValueError(f"--sweep {args.sweep}: the figure file must end in one of {FORMATS}")
    model = load(args)
    if args.layer != "auto":
        args.layer = model.resid(args.layer).layer  # ValueError when out of range; -1 is the last
    if args.layer == "auto" or args.method == "repe":
        reading = repe(model, pairs, held_out=0.25, source=args.pairs, progress=False)
        layer = reading.best_layer() if args.layer == "auto" else args.layer
        accuracy = reading.reading_accuracy[layer]
        print(f"RepE reading accuracy on held-out pairs at layer {layer}: {accuracy:.0%}")
    else:
        layer = args.layer
    if args.method == "repe":
        vector = reading.at(layer)
    else:
        vector = caa(model, pairs, layers=[layer], source=args.pairs, progress=False)
    print(f"{vector.method} vector at layer {layer} from {len(pairs)} pairs ({args.pairs}), "
          f"norm {vector.norm()[layer]:.2f}; alpha = {args.alpha:g}, positions = {args.positions}")
    if args.save_vector:
        print(f"saved vector: {vector.save(args.save_vector)}.safetensors/.json")
    options = dict(max_new_tokens=args.max_new_tokens, positions=args.positions, norm_match=args.norm_match)
    for prompt in prompts or []:
        plain = generate(model, prompt, **options)
        steered = generate(model, prompt, steer=vector, alpha=args.alpha, **options)
        print(f"\n{prompt}\n  unsteered: {plain!r}\n  steered:   {steered!r}")
    if args.sweep:
        alphas = [float(a) for a in args.alphas.split(",")]
        result = sweep(model, vector, alphas, metric, positions=args.positions, norm_match=args.norm_match,
                       fluency_tokens=args.fluency_tokens)
        print("\n" + result.table())
        stem = result.save(Path(args.sweep).with_suffix(""))
        print(f"sweep figure: {save_figure(result.figure(), args.sweep)}; result: {stem}.json")
    return 0
