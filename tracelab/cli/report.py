"""`tracelab report --out report.html`: trace a fact, edit it at the traced layer, write one HTML page."""

from __future__ import annotations

from ._common import add_model_options, load


def register(subparsers) -> None:
    from ..editing import registry
    from ..editing.methods import DEFAULT

    p = subparsers.add_parser("report", help="self-contained HTML report: trace → edit at the peak → re-trace")
    p.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    p.add_argument("--target", default="Rome", help="new answer for the Eiffel Tower (default Rome)")
    p.add_argument("--method", default=DEFAULT, choices=registry.names(), help="edit method")
    p.add_argument("--samples", type=int, default=3, help="noise samples per trace (default 3; the paper: 10)")
    p.add_argument("--stats-tokens", type=int, default=20_000, help="corpus tokens for key statistics (cached)")
    p.add_argument("--compare", default=None, help="a saved `tracelab compare` JSON: adds the every-method section")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..viz.report import write_report

    path = write_report(load(args), args.out, new_target=args.target, method=args.method, samples=args.samples,
                        stats_tokens=args.stats_tokens, comparison=args.compare)
    print(f"wrote {path}")
    return 0
