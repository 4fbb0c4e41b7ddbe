"""`tracelab demo`: the main job on the embedded model, end to end."""

from __future__ import annotations

from ._common import add_model_options, load

DEMO_PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The capital of Australia is",
]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded model")
    p.add_argument("--facts", type=int, default=5, help="how many built-in facts to show (default 5)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import builtin_facts

    model = load(args)
    print(model)
    prompts = DEMO_PROMPTS + [f["prompt"] for f in builtin_facts()[: args.facts]]
    for prompt in prompts:
        top = ", ".join(f"{token!r} {prob:.2f}" for token, prob in model.predict(prompt, k=3))
        print(f"{prompt!r:<55} -> {top}")
    return 0
