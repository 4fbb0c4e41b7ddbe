"""Trainable weight deltas that never touch the weights: W x + ΔW x through forward hooks.

    >>> deltas = {name: torch.zeros_like(model.parameter(name), requires_grad=True)}
    >>> with added(model, deltas):
    ...     loss = ...model.hf(...)...; loss.backward()     # gradients reach ΔW only
    >>> ParamDelta.build(model, name, deltas[name])        # what the method returns

For a weight W of a linear layer (`nn.Linear`, `[out, in]`, or GPT-2's `Conv1D`, `[in, out]`), the
hook adds x ΔWᵀ (resp. x ΔW) to the layer's output, which is the output of the layer with
W + ΔW. Fine-tuning methods optimise ΔW this way and return it as a `ParamDelta`: the model's
weights stay as they were until the edit's transaction applies it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...models import Model


def linear_weights(model: Model) -> list[str]:
    """Names of every linear layer's weight under `model.hf` (beneath any wrapper), in order."""
    names = []
    for path, module in model.hf.named_modules():
        inner = model.module(path) if path else model.hf
        if inner is module and _is_linear(module):
            names.append(f"{path}.weight")
    return names


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


@contextmanager
def added(model: Model, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block each named linear weight W computes as W + `deltas[name]` (same layout as W)."""
    handles = []
    try:
        for name, delta in deltas.items():
            module = model.module(name.rpartition(".")[0])
            if not _is_linear(module) or not name.endswith(".weight"):
                raise ValueError(f"{name} is not the weight of a linear layer")
            transposed = isinstance(module, nn.Linear)  # nn.Linear: y = x Wᵀ; Conv1D: y = x W

            def hook(module, args, output, delta=delta, transposed=transposed):
                x = args[0]
                extra = F.linear(x, delta.to(x.dtype)) if transposed else x @ delta.to(x.dtype)
                return output + extra

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
