"""How the optimising methods run forward and backward passes fast on a CPU.

    >>> with weights_require_grad(model, True), training_mode(model, bf16=True):
    ...     loss = ...; torch.autograd.grad(loss, [delta])     # bf16 matmuls, weights cast once
    >>> with replaying_below(model, 4, ids, mask):             # layers 0..3 return what they returned once
    ...     model.hf(input_ids=ids, attention_mask=mask)

- One autocast region for a whole optimisation: autocast caches the bf16 casts of weights that
  require grad, so each weight is cast once, not on every step (gradients are still taken only
  for what the method optimises). On these CPUs a short-prompt step reads every weight from
  memory, so bf16 weights halve the step. Only where the device multiplies bf16 natively
  (`uses_bf16`): an AVX2 CPU emulates it ~110× slower than float32, so there `bf16=True` runs float32.
- On CPU the plain-math attention, whose backward is ~2× faster than the flash kernel's at
  these lengths; freed activations kept for reuse (`reuse_heap`); a TransformerLens bridge's
  components running the transformers modules they wrap (`Model.native`).
- Layers below the lowest one a change can reach do no work: each returns its recorded output.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ... import dtypes
from ...heap import reuse_heap
from ...models import Model
from ...models.wrappers import forwards_replaced


@contextlib.contextmanager
def weights_require_grad(model: Model, flag: bool) -> Iterator[None]:
    """Every weight's `requires_grad` set to `flag` inside the block (autocast caches the casts of
    those that require grad), and set back after."""
    before = [p.requires_grad for p in model.hf.parameters()]
    model.hf.requires_grad_(flag)
    try:
        yield
    finally:
        for p, g in zip(model.hf.parameters(), before):
            p.requires_grad_(g)


def uses_bf16(model: Model, bf16: bool) -> bool:
    """Whether an optimisation that asks for bf16 autocast (`bf16`) gets it: only on a device that
    multiplies bf16 natively (`dtypes.fast_bf16`); elsewhere float32 is the faster choice."""
    return bf16 and dtypes.fast_bf16(model.device)


@contextlib.contextmanager
def training_mode(model: Model, bf16: bool) -> Iterator[None]:
    """The region an optimisation runs in (see the module doc); `bf16`: autocast where `uses_bf16`."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(reuse_heap())
        stack.enter_context(model.native())
        if uses_bf16(model, bf16):
            stack.enter_context(torch.autocast(model.device.type, dtype=torch.bfloat16))
        if model.device.type == "cpu":
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield


def replay_below(model: Model, first: int, output):
    """Layers 0..first-1 do no work: each returns `output`, the block output of layer first-1
    recorded once (so layer `first` sees the same input as in the full model)."""
    return forwards_replaced((model.layer(l), lambda *args, **kwargs: output) for l in range(first))


@torch.no_grad()
def block_output(model: Model, layer: int, ids: torch.Tensor, mask: torch.Tensor):
    """What decoder layer `layer` returns on `ids` (as the module returns it), computed once (the
    `output` that `replay_below(model, layer + 1, output)` replays)."""
    recorded = {}
    handle = model.layer(layer).register_forward_hook(lambda m, a, o: recorded.setdefault("out", o))
    try:
        with model.record([model.resid(layer)], stop=True):
            model.hf(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return recorded["out"]


def replaying_below(model: Model, first: int, ids: torch.Tensor, mask: torch.Tensor):
    """Layers 0..first-1 replay what they return on `ids` (computed once, here): the region an
    optimisation of layers ≥ `first` runs its steps in; nothing to replay when `first` is 0.

        >>> with replaying_below(model, 4, ids, mask):
        ...     for step in range(25): loss = ...              # layers 0..3 do no work
    """
    if first == 0:
        return contextlib.nullcontext()
    return replay_below(model, first, block_output(model, first - 1, ids, mask))
