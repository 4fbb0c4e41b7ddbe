"""Fine-tuning baselines: FT-L (constrained fine-tuning, Zhu et al. 2020; ROME's FT baseline) and
FT-M (EasyEdit's variant, the loss on the target tokens only).

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="ft-l")    # traced layer
    >>> tl.edit(model, requests, method="ft-m", layers=[4, 5], params=FTMParams(steps=40))

The chosen MLP weights W of `layers` are fine-tuned on the edit prompts → targets for `steps`
Adam steps; after each step every weight's change is clamped to the L∞ ball of radius ε around
its original value (Zhu et al.'s constraint; FT-M is unconstrained by default, as EasyEdit):

    FT-L ("prompt_last", ROME's code): L = −mean_j log p(y_j | x)   (every target token scored at the
                                       last prompt position)
    FT-M ("target_new"):               L = −mean_j log p(y_j | x, y_<j)   (teacher forcing on the target)
    W ← clamp(W − lr·Adam(∇L), W₀ − ε, W₀ + ε)

ΔW is trained through hooks (`toolkit.deltas`), so the model's weights are untouched until the
edit's transaction applies the result: one `ParamDelta` per changed weight.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch

from ...models import Model
from ..changes import Change, ParamDelta
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.compute import replaying_below, training_mode, uses_bf16, weights_require_grad
from ..toolkit.answers import target_batch
from ..toolkit.deltas import added, linear_weights

MATRICES = ("mlp_out", "mlp")


@dataclass
class FTParams:
    """Shared by FT-L and FT-M. `matrices`: "mlp_out" (the MLP output projection, ROME's FT) or
    "mlp" (every linear weight of the MLP); `epsilon`: the L∞ radius of each weight's change
    (None: unconstrained)."""

    steps: int = 25
    lr: float = 5e-4
    epsilon: float | None = 5e-4
    matrices: str = "mlp_out"
    objective: Literal["prompt_last", "target_new"] = "prompt_last"
    weight_decay: float = 0.0
    bf16: bool = True  # matmuls in bf16 autocast where native (compute.uses_bf16); gradients and ΔW stay float32

    def __post_init__(self) -> None:
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"epsilon is the L∞ radius of the weight change and must be > 0 (or None for no "
                             f"constraint), got {self.epsilon!r}")
        if self.matrices not in MATRICES:
            raise ValueError(f"matrices must be one of {MATRICES}, got {self.matrices!r}")
        if self.objective not in ("prompt_last", "target_new"):
            raise ValueError(f"objective must be 'prompt_last' (FT-L) or 'target_new' (FT-M), got {self.objective!r}")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.lr > 0:
            raise ValueError(f"steps must be a positive int and lr > 0, got steps={self.steps!r}, lr={self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FTLParams(FTParams):
    """FT-L: ROME's constrained fine-tuning (ε = 5e-4 on the MLP output weight, 25 steps, lr 5e-4)."""


@dataclass
class FTMParams(FTParams):
    """FT-M: EasyEdit's fine-tuning with the loss on the target tokens, unconstrained."""

    epsilon: float | None = None
    objective: Literal["prompt_last", "target_new"] = "target_new"


def weights_to_tune(model: Model, layers: Sequence[int], matrices: str) -> list[tuple[int, str]]:
    """(layer, parameter name): the MLP output weight of each layer, or every linear weight of its MLP."""
    if matrices == "mlp_out":
        return [(l, model.mlp_out_weight(l).name) for l in layers]
    linear = linear_weights(model)
    return [(l, n) for l in layers for n in linear if n.startswith(f"{model._layer_path(l, model.arch.mlp)}.")]


def edit_loss(model: Model, ids, mask, spans, objective: str) -> torch.Tensor:
    """Mean over requests (the first `len(spans)` rows of `ids`) of the objective's NLL (see the
    module doc). Only the positions that predict a target token go through the unembedding."""
    reads = [[n - 1] * len(t) if objective == "prompt_last" else list(range(n - 1, n - 1 + len(t))) for n, t in spans]
    keep = sorted({p for r in reads for p in r})
    column = {p: j for j, p in enumerate(keep)}
    with model.native():
        try:
            logits = model.hf(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor(keep)).logits
        except TypeError:  # a model without `logits_to_keep`: every position
            logits, column = model.hf(input_ids=ids, attention_mask=mask).logits, {p: p for p in keep}
    losses = []
    for row, ((_, target), positions) in enumerate(zip(spans, reads)):
        cols = torch.tensor([column[p] for p in positions], device=ids.device)
        log_probs = logits[row, cols].float().log_softmax(-1)                              # [len(target), vocab]
        losses.append(-log_probs[torch.arange(len(target)), torch.tensor(target, device=ids.device)].mean())
    return torch.stack(losses).mean()


def finetune_deltas(model: Model, requests: Sequence[Request], chosen: Sequence[tuple[int, str]], params: FTParams,
                    progress: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """ΔW per weight name after `params.steps` constrained Adam steps; the model's weights are
    untouched. `chosen`: (layer, name) pairs. Runs in one bf16 autocast region (`params.bf16`, where native),
    and the layers below the lowest chosen one return their output recorded once (`toolkit.compute`)."""
    names = [n for _, n in chosen]
    deltas = {n: torch.zeros_like(model.parameter(n), dtype=torch.float32, requires_grad=True) for n in names}
    trained = list(deltas.values())
    opt = torch.optim.Adam(trained, lr=params.lr, weight_decay=params.weight_decay)
    ids, mask, spans = target_batch(model, requests)
    first = min(l for l, _ in chosen)
    losses = []
    bf16 = uses_bf16(model, params.bf16)
    with weights_require_grad(model, bf16), training_mode(model, bf16):
        with replaying_below(model, first, ids, mask), added(model, deltas), torch.enable_grad():
            for _ in range(params.steps):
                loss = edit_loss(model, ids, mask, spans, params.objective)
                # gradients for ΔW only: the model's own weights need none (autograd skips their matmuls)
                for d, g in zip(trained, torch.autograd.grad(loss, trained)):
                    d.grad = g
                opt.step()
                losses.append(float(loss.detach()))
                if params.epsilon is not None:
                    with torch.no_grad():
                        for d in trained:
                            d.clamp_(-params.epsilon, params.epsilon)
    return {n: d.detach() for n, d in deltas.items()}, {"loss": losses}


class _FineTune(Method):
    # layer="auto": the traced MLP peak, one layer, as ROME's FT baseline; any increasing layers given
    family, batch, layers, auto_layers = "fine-tune", True, "range", "peak"

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: FTParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        chosen = weights_to_tune(model, layers, params.matrices)
        deltas, info = finetune_deltas(model, requests, chosen, params, ctx.progress)
        ctx.info.update(info, seconds={"finetune": time.perf_counter() - t},
                        parameters_changed=sum(d.numel() for d in deltas.values()))
        return [ParamDelta.build(model, n, deltas[n], layer=l) for l, n in chosen]


@register
class FTL(_FineTune):
    """FT-L: constrained fine-tuning of the traced layer's MLP output weight (ROME's FT baseline)."""

    name, title, Params = "ft-l", "FT-L", FTLParams


@register
class FTM(_FineTune):
    """FT-M: fine-tuning with the loss on the target tokens (EasyEdit)."""

    name, title, Params = "ft-m", "FT-M", FTMParams
