"""`tracelab predict --prompt TEXT [-k N]`: top-k next tokens with their probabilities."""

from __future__ import annotations

from ._common import add_model_options, load


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-k next tokens of a prompt, with probabilities")
    p.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for several)")
    p.add_argument("-k", type=int, default=5, help="how many tokens (default 5)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    model = load(args)
    for prompt in args.prompt:
        print(prompt)
        for rank, (token, prob) in enumerate(model.predict(prompt, k=args.k), 1):
            print(f"  {rank:>2}. {token!r:<20} {prob:7.2%}")
    return 0
