"""`tracelab eval --records FILE|SUITE --method M --limit N [--layer L] [--mode sequential] [--out results.json]`."""

from __future__ import annotations

from ._common import add_model_options, load
from .edit import parse_layer


def register(subparsers) -> None:
    from ..editing import registry
    from ..editing.methods import DEFAULT
    from ..evaluation import suite_names
    from ..evaluation.runner import MODES

    p = subparsers.add_parser("eval", help="score an editing method on a suite's cases (table + JSON)")
    p.add_argument("--records", required=True,
                   help=f"CounterFact (nested or EasyEdit flat), zsRE, known-facts, MQuAKE or RippleEdits JSON/JSONL "
                        f"file, or a suite name ({', '.join(suite_names())}: its default data)")
    p.add_argument("--method", default=DEFAULT, choices=["none", *registry.names()])
    p.add_argument("--suite", default=None, type=suite_name,
                   help=f"how cases are scored: {', '.join(suite_names())}, or several joined with '+' "
                        "(default: from the records)")
    p.add_argument("--mode", default=None, choices=MODES, help="single / batch / sequential (default: by the method)")
    p.add_argument("--checkpoints", default="1,10,100,1000", help="sequential mode: score after these many edits")
    p.add_argument("--batch-size", type=int, default=1, help="sequential mode: requests per edit")
    p.add_argument("--limit", type=int, default=20, help="first N records (default 20)")
    p.add_argument("--layer", default="auto", help="layer, 'A-B' range, or 'auto'")
    p.add_argument("--stats-tokens", type=int, default=100_000)
    p.add_argument("--generation", action="store_true", help="also generate text for the n-gram entropy (slower)")
    p.add_argument("--guard", action="store_true", help="refuse (and score unedited) edits that collapse the model")
    p.add_argument("--out", default=None, help="write the per-record results and summary as JSON here")
    add_model_options(p)
    p.set_defaults(func=run)


def suite_name(text: str) -> str:
    """A registered suite's name, or several joined with '+' (argparse type: a clear error otherwise)."""
    import argparse

    from ..evaluation import get_suite

    try:
        get_suite(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def run(args) -> int:
    from ..evaluation import evaluate

    model = load(args)
    method = None if args.method == "none" else args.method
    layer = parse_layer(args.layer)
    kwargs = {} if method is None else {"stats_tokens": args.stats_tokens, "guard": args.guard,
                                        ("layers" if isinstance(layer, list) else "layer"): layer}
    checkpoints = tuple(int(c) for c in args.checkpoints.split(","))
    res = evaluate(model, args.records, method, suite=args.suite, mode=args.mode, checkpoints=checkpoints,
                   batch_size=args.batch_size, limit=args.limit, generation=args.generation, **kwargs)
    print(res.table())
    if args.out:
        print(f"results written to {res.save(args.out)}")
    return 0
