"""`tracelab stats --layers 3-7 [--tokens N] [--corpus wordnet]`: compute and cache key statistics.

Also under torchrun (the ranks share the batches; rank 0 prints and writes the cache):

    $ torchrun --standalone --nproc_per_node 2 -m tracelab stats --layers 3-7 --tokens 1000000
"""

from __future__ import annotations

from ._common import add_model_options, load
from .edit import parse_layer


def register(subparsers) -> None:
    p = subparsers.add_parser("stats", help="compute (and cache) the MLP key second moments that editing uses")
    p.add_argument("--layers", required=True, help="a layer, 'A-B' (inclusive) or 'A,B,C'")
    p.add_argument("--tokens", type=int, default=100_000, help="corpus tokens (default 100000)")
    p.add_argument("--corpus", default="wordnet", help="wordnet (default, offline), a .txt/.jsonl file, or hf:NAME[:CONFIG[:SPLIT]]")
    p.add_argument("--float64", action="store_true", help="accumulate in float64 (default float32)")
    p.add_argument("--forward-dtype", choices=("auto", "model", "bfloat16"), default="auto",
                   help="dtype of the forward pass: auto (bfloat16 autocast for a float32 model where the "
                        "device multiplies bfloat16 natively; the sums stay float32), the model's own, or bfloat16")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import torch

    from ..distributed import init_from_env, rank
    from ..editing import key_stats

    distributed = init_from_env()
    layers = parse_layer(args.layers)
    if layers == "auto":
        raise ValueError("--layers needs explicit layers, e.g. 3-7")
    model = load(args)
    start = time.perf_counter()
    stats = key_stats(model, [layers] if isinstance(layers, int) else layers, corpus=args.corpus,
                      tokens=args.tokens, dtype=torch.float64 if args.float64 else torch.float32,
                      forward_dtype={"auto": "auto", "model": None, "bfloat16": torch.bfloat16}[args.forward_dtype])
    if rank() == 0:
        where = f" on {torch.distributed.get_world_size()} processes" if distributed else ""
        print(f"{'layer':>5} {'tokens':>8}  corpus / weights hash   ({time.perf_counter() - start:.1f}s{where})")
        for l, s in stats.items():
            print(f"{l:>5} {s.count:>8}  {s.provenance['corpus']} / {s.provenance['weights']}")
    if distributed:  # every rank done with its collectives first: a rank that leaves early aborts gloo on the other
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
