"""GRACE (Hartvigsen et al., NeurIPS 2023): a codebook at one layer's output. Inputs near an edited
one get the edit's trained activation; every other input passes untouched.

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="grace")   # layer 25 of 30
    >>> tl.evaluate(model, "zsre", method="grace", mode="sequential")

Each edit adds one entry (key k, value v, radius ε, label y) at `blocks.{l}.mlp_out`:

    k = h_l(x)[last prompt token]                     h_l: the MLP output of layer l, without the codebook
    v = argmin_v −mean_j log p(y_j | x, y_<j)         h_l[t] ← v where t matches k (Adam, `steps`, from rand)

At every position t of every input, the nearest key with ‖h_l[t] − k_i‖ ≤ r_i replaces h_l[t] by v_i:

    r_i = min(ε_i, min_{j: y_j ≠ y_i} ‖k_i − k_j‖ / 2)     the paper's split of balls whose answers conflict

Defaults are EasyEdit's for LLaMA-2-7B (ε = 1.0, 50 Adam steps at lr 1.0, a value started from
uniform noise ("cold"), layer 27 of 32 → the same depth here). Where this differs from the paper,
so that every edit is one Change that undoes exactly (also from the middle of a stream):
- radii are derived from the entries present (above) instead of being rewritten when a key is
  added, so removing an entry gives the others their radii back;
- a new key near one of the same answer becomes its own entry, where the paper widens the old
  radius to reach it ("coverage"): the union of the two balls instead of one larger ball;
- every position is matched (EasyEdit replaces the last token of the sequence only, which under
  teacher forcing is the last target token, not the prompt's); equal distances go to the newest;
- a key repeated with another answer (the same prompt edited again) retires the older entry,
  where the paper's split would give both a radius of 0.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ...models import Model
from ..changes import Change, HookPatch
from ..patches import PatchModule, attach, bypassed, register_patch
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.compute import replaying_below, training_mode, weights_require_grad
from ..toolkit.answers import target_batch
from .ft import edit_loss

DEPTH = 27 / 31  # EasyEdit's GRACE layer for LLaMA-2-7B: model.layers[27] of 0..31


def easyedit_layer(model: Model) -> int:
    """The layer at EasyEdit's depth for GRACE and WISE (27 of LLaMA-2-7B's 0..31; 25 of 0..29)."""
    return round(DEPTH * (model.n_layers - 1))


@dataclass
class GraceParams:
    """`epsilon`: ε_init, the deferral radius of a new key (in the units of the layer's MLP output);
    `steps`, `lr`: Adam on the value; `init`: "cold" (uniform noise, EasyEdit) or "warm" (the
    activation itself); `seed`: of the cold start; `stop_loss`: stop once the loss is below it
    (None: every step, as EasyEdit)."""

    epsilon: float = 1.0
    steps: int = 50
    lr: float = 1.0
    init: Literal["cold", "warm"] = "cold"
    seed: int = 0
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ValueError(f"epsilon is the deferral radius of a key and must be > 0, got {self.epsilon!r}")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.lr > 0:
            raise ValueError(f"steps must be a positive int and lr > 0, got steps={self.steps!r}, lr={self.lr!r}")
        if self.init not in ("cold", "warm"):
            raise ValueError(f"init must be 'cold' or 'warm', got {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@register_patch
class GraceEntry(PatchModule):
    """One codebook entry: `key` `[width]`, `value` `[width]`, `epsilon` `[]`, `label` `[]` (int64,
    the answer's hash). Entries at one site run together (`forward_group`: nearest key wins)."""

    shared = True

    def __init__(self, width: int):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(width), requires_grad=False)
        self.register_buffer("key", torch.zeros(width))
        self.register_buffer("epsilon", torch.tensor(0.0))
        self.register_buffer("label", torch.tensor(0, dtype=torch.int64))

    def config(self) -> dict:
        return {"width": self.key.numel()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_group(x, [self], {})

    @classmethod
    def forward_group(cls, x: torch.Tensor, members: list[GraceEntry], cache: dict) -> torch.Tensor | None:
        """x `[batch, pos, width]` → x with each position inside a ball replaced by its nearest key's value."""
        if "radii" not in cache:  # keys and radii change only when an entry joins or leaves
            cache["keys"], cache["radii"] = key_radii(members)
        keys, radii = cache["keys"], cache["radii"]
        rows = x.reshape(-1, x.shape[-1])
        dist = torch.cdist(rows.float(), keys)                                           # [rows, n]
        dist = dist.masked_fill(dist > radii, float("inf")).flip(1)                      # newest first on ties
        nearest, newest_first = dist.min(1)
        hit = torch.isfinite(nearest)
        if not bool(hit.any()):
            return None
        values = torch.stack([m.value for m in members]).flip(0)                         # [n, width]
        return torch.where(hit[:, None], values[newest_first].to(x.dtype), rows).view_as(x)


def key_radii(members: list[GraceEntry]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys `[n, width]` and radii `[n]`: r_i = min(ε_i, min_{j: y_j ≠ y_i} ‖k_i − k_j‖ / 2); an
    entry whose key a newer entry of another answer repeats (a fact edited again) matches nothing."""
    keys = torch.stack([m.key for m in members])
    labels = torch.stack([m.label for m in members])
    dist = torch.cdist(keys, keys)                                                       # [n, n]
    conflict = labels[:, None] != labels[None, :]
    repeated = conflict & (dist <= 1e-4 * keys.norm(dim=1).clamp_min(1.0)[:, None])
    newer = torch.arange(len(members))[None, :] > torch.arange(len(members))[:, None]
    half = (dist / 2).masked_fill(~conflict | repeated, float("inf"))
    r = torch.minimum(torch.stack([m.epsilon for m in members]), half.min(1).values)
    return keys, r.masked_fill((repeated & newer).any(1), -1.0)


def answer_label(model: Model, request: Request) -> torch.Tensor:
    """The label GRACE compares: a 62-bit hash of the target's token ids."""
    ids = model.target_ids(request.text, request.target)
    return torch.tensor(int(hashlib.sha256(str(ids).encode()).hexdigest()[:15], 16), dtype=torch.int64)


@register
class Grace(Method):
    """GRACE: a codebook of (key, value, ε) at one layer's MLP output, one entry per edit."""

    name, title, family, Params, layers = "grace", "GRACE", "memory", GraceParams, "one"

    def default_layers(self, model: Model, request: Request) -> list[int]:
        """`layer="auto"`: EasyEdit's depth (`easyedit_layer`), not a trace."""
        return [easyedit_layer(model)]

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: GraceParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        (request,), (layer,) = requests, layers
        site = model.mlp_out(layer)
        ids, mask, spans = target_batch(model, [request])
        with torch.no_grad(), bypassed(model, site, GraceEntry), model.record([site]) as seen:
            model.hf(input_ids=ids, attention_mask=mask)
        key = seen[site.name][0, spans[0][0] - 1].float()                               # last prompt token
        entry = GraceEntry(key.numel()).to(model.device)
        entry.key.copy_(key)
        entry.epsilon.fill_(params.epsilon)
        entry.label.copy_(answer_label(model, request))
        if params.init == "warm":
            entry.value.data.copy_(key)
        else:
            entry.value.data.copy_(torch.rand(key.numel(), generator=torch.Generator().manual_seed(params.seed)))
        losses = train_value(model, entry, site, layer, ids, mask, spans, params)
        ctx.info.update(loss=losses, seconds={"grace": time.perf_counter() - t}, parameters_added=2 * key.numel() + 2)
        return [HookPatch(site.name, entry)]


def train_value(model: Model, entry: GraceEntry, site, layer: int, ids, mask, spans, params: GraceParams) -> list[float]:
    """Adam on `entry.value` with the entry in its site's codebook (so conflicts are split while it
    trains); layers below `layer` replay their recorded output. Returns the loss per step."""
    entry.value.requires_grad_(True)
    opt = torch.optim.Adam([entry.value], lr=params.lr)
    handle = attach(model, site, entry)
    losses = []
    try:
        with weights_require_grad(model, False), training_mode(model, bf16=False):
            with replaying_below(model, layer, ids, mask), torch.enable_grad():
                for _ in range(params.steps):
                    loss = edit_loss(model, ids, mask, spans, "target_new")
                    if not loss.requires_grad:
                        raise ValueError("the edit prompt's key did not reach the codebook: no value to train")
                    (entry.value.grad,) = torch.autograd.grad(loss, [entry.value])
                    opt.step()
                    losses.append(float(loss.detach()))
                    if params.stop_loss is not None and losses[-1] < params.stop_loss:
                        break
    finally:
        handle.remove()
        entry.value.requires_grad_(False)
    return losses
