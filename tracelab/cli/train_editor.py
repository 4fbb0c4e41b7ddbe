"""`tracelab train-editor mend --data FILE [--limit N] [--steps N]`: train a learned editor.

    $ tracelab train-editor mend --data ../shared/data/zsre-sample.json --limit 500 --steps 1000
    $ tracelab train-editor mend --data ../shared/data/counterfact-train.json --steps 1000
    $ torchrun --standalone --nproc_per_node 2 -m tracelab train-editor mend --data ...   # data-parallel

The checkpoint goes to the cache (`$TRACELAB_CACHE/editors/...`), where `tracelab edit --method
mend` finds it; an interrupted run resumes when the same command is run again.
"""

from __future__ import annotations

import json

from ._common import add_model_options, load
from .edit import parse_layer


def register(subparsers) -> None:
    p = subparsers.add_parser("train-editor", help="train a learned editor (MEND) on edit records; resumable")
    p.add_argument("method", help="a method that learns to edit, e.g. mend")
    p.add_argument("--data", required=True, help="training records: CounterFact (EasyEdit flat or nested) or zsRE")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (zsRE: 500; 500.. are evaluated)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--layers", default=None, help="'A-B' or 'A,B,C' (default: the method's)")
    p.add_argument("--batch-size", type=int, default=10, help="edits per step")
    p.add_argument("--val", type=int, default=50, help="records held out for validation")
    p.add_argument("--val-every", type=int, default=100, help="steps between validations (and checkpoints)")
    p.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter of the method's Params (JSON value), e.g. --set lr=1e-4 (repeatable)")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming a saved run")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..distributed import init_from_env, rank
    from ..editing import registry
    from ..training import train_editor

    distributed = init_from_env()
    m = registry.get(args.method)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    layers = parse_layer(args.layers) if args.layers else None
    meta = train_editor(args.method, load(args), args.data, steps=args.steps, limit=args.limit,
                        layers=[layers] if isinstance(layers, int) else layers, params=m.Params(**overrides),
                        batch_size=args.batch_size, val=args.val, val_every=args.val_every, patience=args.patience,
                        seed=args.seed, resume=not args.restart)
    if rank() == 0:
        best = meta["best"]
        print(f"{args.method}: {meta['step']} steps, best validation {best['score']:.3f} at step {best['step']}"
              f"{' on %d processes' % meta['world_size'] if distributed else ''}\n{meta['path']}")
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
