"""`tracelab edit --subject S --prompt "{} is in" --target T [--method M] [--layer auto] [--save DIR]`."""

from __future__ import annotations

from ._common import add_model_options, load


def register(subparsers) -> None:
    from ..editing import registry
    from ..editing.methods import DEFAULT

    p = subparsers.add_parser("edit", help="edit a fact with a registered method; show before/after; save the journal")
    p.add_argument("--subject", required=True, help="the entity, e.g. 'The Eiffel Tower'")
    p.add_argument("--prompt", required=True, help="template with {} for the subject, e.g. '{} is located in the city of'")
    p.add_argument("--target", required=True, help="the new answer, e.g. 'Rome'")
    p.add_argument("--method", default=DEFAULT, choices=registry.names())
    p.add_argument("--layer", default="auto", help="layer index, a range 'A-B' (MEMIT), or 'auto' (trace first)")
    p.add_argument("--corpus", default="wordnet", help="statistics corpus: wordnet (default), a .txt/.jsonl file, hf:NAME")
    p.add_argument("--stats-tokens", type=int, default=100_000, help="tokens for the key statistics (cached)")
    p.add_argument("--check", action="append", default=[], help="another prompt to show before/after (repeatable)")
    p.add_argument("--save", default=None, help="write the journal (deltas + JSON) to this directory")
    p.add_argument("--save-model", default=None, help="save the edited model (save_pretrained) to this directory")
    p.add_argument("--guard", action="store_true",
                   help="refuse the edit if held-out perplexity passes 2x the unedited model's or a weight changes by "
                        "more than its norm (the collapse guard)")
    add_model_options(p)
    p.set_defaults(func=run)


def parse_layer(text: str):
    """'auto' | '5' | '3-7' (inclusive) | '3,4,5'."""
    if text == "auto":
        return "auto"
    try:
        if "-" in text:
            a, b = text.split("-")
            return list(range(int(a), int(b) + 1))
        if "," in text:
            return [int(x) for x in text.split(",")]
        return int(text)
    except ValueError:
        raise ValueError(f"--layer must be 'auto', an int, 'A-B' or 'A,B,C'; got {text!r}") from None


def run(args) -> int:
    from ..editing import edit, journal

    model = load(args)
    text = args.prompt.replace("{}", args.subject)
    prompts = [text, *args.check]
    before = {p: model.predict(p, 1)[0] for p in prompts}
    layer = parse_layer(args.layer)
    e = edit(model, subject=args.subject, prompt=args.prompt, target=args.target, method=args.method,
             **({"layers": layer} if isinstance(layer, list) else {"layer": layer}),
             corpus=args.corpus, stats_tokens=args.stats_tokens, guard=args.guard)
    print(f"{args.method} edit at layer(s) {e.layers}: norms {e.info.get('norms')}, "
          f"time {e.info.get('total_seconds', 0):.1f}s {e.info.get('seconds', {})}")
    if "health" in e.info:
        h = e.info["health"]
        print(f"  health: held-out perplexity {h['base_perplexity']:.2f} → {h['perplexity']:.2f}, largest weight "
              f"change {max(h['weight_change'].values(), default=0):.3g} of its norm")
    for p in prompts:
        after = model.predict(p, 1)[0]
        print(f"  {p!r}: {before[p][0]!r} ({before[p][1]:.2f}) → {after[0]!r} ({after[1]:.2f})")
    if args.save:
        print(f"journal saved to {journal(model).save(args.save)}")
    if args.save_model:
        model.hf.save_pretrained(args.save_model)
        model.tokenizer.save_pretrained(args.save_model)
        print(f"edited model saved to {args.save_model}")
    return 0
