"""LoRA editing (Hu et al. 2022, as EasyEdit's LoRA baseline), with the `peft` library.

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="lora")
    >>> tl.edit(model, requests, method="lora", params=LoRAParams(r=4, target_modules=("down_proj",)))

Rank-r adapters ΔW = (α/r)·B A (B `[out, r]`, A `[r, in]`) on every `target_modules` linear layer
(of `layers`, default all) are trained on the edit prompts → targets (teacher-forced NLL of the
target tokens) for `steps` Adam steps; peft injects them and removes them again (`unload`), and
the trained adapters come back as factored `ParamDelta`s — ΔW kept as its two factors — so the
journal applies, undoes, saves and replays them like any edit. Defaults are EasyEdit's LoRA
(r 8, α 32, dropout 0.1, q/v projections, 70 steps, lr 5e-3).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ...models import Model
from ..changes import Change, ParamDelta
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.compute import training_mode
from ..toolkit.deltas import linear_weights
from ..toolkit.answers import target_batch
from .ft import edit_loss


@dataclass
class LoRAParams:
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None  # None: every layer
    steps: int = 70
    lr: float = 5e-3
    seed: int = 0
    stop_loss: float | None = None  # stop once the edit loss is below this (None: every step, as EasyEdit)

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"the LoRA rank r must be a positive int, got {self.r!r}")
        if not self.alpha > 0 or not 0 <= self.dropout < 1 or not self.lr > 0 or self.steps < 1:
            raise ValueError(f"need alpha > 0, 0 <= dropout < 1, lr > 0, steps >= 1; got alpha={self.alpha}, "
                             f"dropout={self.dropout}, lr={self.lr}, steps={self.steps}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(f"target_modules is a tuple of module names, e.g. ('q_proj', 'v_proj'), "
                             f"got {self.target_modules!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def adapted_weights(model: Model, params: LoRAParams) -> list[str]:
    """Names of the weights the adapters go on; ValueError listing the model's linear modules when
    a target module does not exist."""
    linear = linear_weights(model)
    kinds = sorted({n.rsplit(".", 2)[-2] for n in linear})
    missing = [t for t in params.target_modules if t not in kinds]
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} do not exist in {model.name}; its linear modules are "
                         f"{kinds}")
    layers = None if params.layers is None else {model._check_layer(l) for l in params.layers}
    chosen = []
    for name in linear:
        if name.rsplit(".", 2)[-2] not in params.target_modules:
            continue
        if layers is None or any(name.startswith(model._layer_path(l) + ".") for l in layers):
            chosen.append(name)
    return chosen


def lora_factors(model: Model, requests: Sequence[Request], names: Sequence[str], params: LoRAParams
                 ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Train the adapters; `{weight name: (A, B)}` with ΔW = A Bᵀ in the weight's layout. The model
    is exactly as before afterwards (adapters unloaded, `requires_grad` flags restored)."""
    from peft import LoraConfig, get_peft_model

    hf = model.hf
    flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    modules = sorted({n.removesuffix(".weight") for n in names})
    conv1d = any(not isinstance(model.module(m), nn.Linear) for m in modules)  # GPT-2: weight [in, out]
    config = LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout, bias="none",
                        target_modules=modules, fan_in_fan_out=conv1d)
    ids, mask, spans = target_batch(model, requests)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(hf, config)
        try:
            trained = [p for n, p in peft_model.named_parameters() if "lora_" in n]
            opt = torch.optim.Adam(trained, lr=params.lr)
            peft_model.train()
            # float32: under one autocast region the adapters' own bf16 casts would be cached at the
            # first step and never see Adam's updates (autocast caches casts of leaf tensors that
            # require grad); gradients are taken for the adapters only
            with training_mode(model, bf16=False), torch.enable_grad():
                for _ in range(params.steps):
                    loss = edit_loss(model, ids, mask, spans, "target_new")
                    for p, g in zip(trained, torch.autograd.grad(loss, trained)):
                        p.grad = g
                    opt.step()
                    losses.append(float(loss.detach()))
                    if params.stop_loss is not None and losses[-1] < params.stop_loss:
                        break
            factors = {}
            for m in modules:
                layer = peft_model.base_model.model.get_submodule(m)
                A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()  # [r, in], [out, r]
                scaled = layer.scaling["default"] * B
                # ΔW = s·B A: nn.Linear's [out, in] = (sB)(Aᵀ)ᵀ; Conv1D's [in, out] = (Aᵀ)(sB)ᵀ
                factors[f"{m}.weight"] = (A.T.clone(), scaled.clone()) if conv1d else (scaled.clone(), A.T.clone())
        finally:
            peft_model.unload()
            for attr in ("peft_config", "_hf_peft_config_loaded"):
                if attr in vars(hf):
                    delattr(hf, attr)
            for n, p in hf.named_parameters():
                p.requires_grad_(flags.get(n, p.requires_grad))
            hf.eval()
    return factors, {"loss": losses}


@register
class LoRA(Method):
    """LoRA as a registered method: factored `ParamDelta`s, one per adapted weight."""

    name, title, family, Params, batch, layers = "lora", "LoRA", "fine-tune", LoRAParams, True, "none"

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: LoRAParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        names = adapted_weights(model, params)
        factors, info = lora_factors(model, requests, names, params)
        ctx.info.update(info, seconds={"train": time.perf_counter() - t},
                        parameters_changed=sum(a.numel() + b.numel() for a, b in factors.values()))
        return [ParamDelta.build(model, n, factors=factors[n]) for n in names]
