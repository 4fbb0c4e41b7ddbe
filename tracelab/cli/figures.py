"""`tracelab figures [--out figures]`: the paper figures as PDF, SVG and PNG (single column)."""

from __future__ import annotations

from ._common import add_model_options, load


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="paper figures (trace, Figure 2 average, edit bars, steering sweep)")
    p.add_argument("--out", default="figures", help="output folder (default figures/)")
    p.add_argument("--facts", type=int, default=6, help="built-in facts in the average (default 6; the paper: 1000)")
    p.add_argument("--samples", type=int, default=2, help="noise samples per trace (default 2; the paper: 10)")
    p.add_argument("--formats", nargs="+", default=["pdf", "svg", "png"], choices=("pdf", "svg", "png"))
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..viz.paper import write_figures

    for path in write_figures(load(args), args.out, formats=tuple(args.formats), facts=args.facts,
                              samples=args.samples):
        print(f"wrote {path}")
    return 0
