"""`tracelab eval --records FILE --method rome --limit N [--layer L] [--out results.json]`."""

from __future__ import annotations

from ._common import add_model_options, load
from .edit import parse_layer


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score an editing method on CounterFact / zsRE records (table + JSON)")
    p.add_argument("--records", required=True, help="CounterFact (nested or EasyEdit flat) or zsRE JSON/JSONL file")
    p.add_argument("--method", default="rome", choices=["none", "rome", "memit", "alphaedit"])
    p.add_argument("--limit", type=int, default=20, help="first N records (default 20)")
    p.add_argument("--layer", default="auto", help="layer, 'A-B' range, or 'auto'")
    p.add_argument("--stats-tokens", type=int, default=100_000)
    p.add_argument("--generation", action="store_true", help="also generate text for the n-gram entropy (slower)")
    p.add_argument("--out", default=None, help="write the per-record results and summary as JSON here")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation import evaluate

    model = load(args)
    method = None if args.method == "none" else args.method
    layer = parse_layer(args.layer)
    kwargs = {} if method is None else {"stats_tokens": args.stats_tokens,
                                        ("layers" if isinstance(layer, list) else "layer"): layer}
    res = evaluate(model, args.records, method, limit=args.limit, generation=args.generation, **kwargs)
    print(res.table())
    if args.out:
        print(f"results written to {res.save(args.out)}")
    return 0
