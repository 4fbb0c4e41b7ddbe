"""torch.distributed, when the process was started by torchrun (or the caller set it up).

    $ torchrun --nproc_per_node 4 -m tracelab stats --layers 3-7 --tokens 1000000

    >>> init_from_env()                   # gloo on CPU, NCCL on GPU; no-op when WORLD_SIZE is 1 or unset
    >>> rank(), world_size()              # (0, 1) outside torchrun
    >>> reduce_sum_(partial, to=0)        # rank 0 then holds the sum over ranks (others: unchanged)

Nothing here is needed on one process: every helper then does nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment): NCCL when CUDA is available, else gloo. On CPU each rank gets an equal share
    of the cores. Returns whether this is a distributed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return is_distributed()


def reduce_sum_(tensor: torch.Tensor, to: int | None = None) -> torch.Tensor:
    """Sum `tensor` over ranks in place: on every rank (`to=None`, all-reduce) or on rank `to`
    only (reduce). Returns `tensor`; a no-op on one process."""
    if is_distributed():
        if to is None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            dist.reduce(tensor, dst=to, op=dist.ReduceOp.SUM)
    return tensor
