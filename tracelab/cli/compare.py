"""`tracelab compare [--methods rome,memit,...] [--n 20] [--layer 4 --layers 2-6] [--out compare.json]`."""

from __future__ import annotations

from ._common import add_model_options, load
from .edit import parse_layer


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="every editing method on the same records: one table, a figure, JSON")
    p.add_argument("--records", default="counterfact",
                   help="a records file (CounterFact or zsRE format) or a suite name (its default data)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one)")
    p.add_argument("--n", type=int, default=20, help="records per method (default 20)")
    p.add_argument("--mode", default="single", choices=("single", "sequential"))
    p.add_argument("--layer", default="auto", help="the one-layer weight editors' layer (default: traced per case)")
    p.add_argument("--layers", default="auto", help="MEMIT/AlphaEdit's layers, 'A-B' or 'A,B,C' (default: traced)")
    p.add_argument("--stats-tokens", type=int, default=100_000, help="corpus tokens for key statistics (cached)")
    p.add_argument("--no-generation", action="store_true", help="skip the fluency generations (faster)")
    p.add_argument("--out", default="compare.json", help="the comparison as JSON (default compare.json)")
    p.add_argument("--figure", default=None, help="also write the bar chart here (.html/.png/.pdf/.svg)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.compare import compare

    layers = parse_layer(args.layers)
    if isinstance(layers, int):
        layers = [layers]
    methods = args.methods.split(",") if args.methods else None
    cmp = compare(load(args), args.records, methods, n=args.n, mode=args.mode, layer=parse_layer(args.layer),
                  layers=layers, generation=not args.no_generation, stats_tokens=args.stats_tokens)
    print(cmp.table())
    print(f"comparison written to {cmp.save(args.out)}")
    if args.figure:
        from ..viz.export import save_figure

        print(f"figure written to {save_figure(cmp.figure(), args.figure)}")
    return 0
