"""WISE (Wang et al., NeurIPS 2024): edits go into a side memory — a copy of one MLP output
projection — and a router sends an input there only when the side memory's activation on it
stands out.

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="wise")   # layer 25 of 30
    >>> tl.evaluate(model, "zsre", method="wise", mode="sequential")

Side memory W' = W + ΔW_s at `blocks.{l}.mlp_out_proj` (key k, value v = W k); shard s takes the
edits s·save_freq … (s+1)·save_freq − 1 and may only change a random `mask_ratio` of W's entries:

    Δ(x) = mean_t ‖σ(W' k_t) − σ(W k_t)‖             activation score (σ: the model's MLP activation)
    L = L_edit + [Δ(x_irr) − Δ(x_e) + γ]₊ + [Δ(x_irr) − α]₊ + [β − Δ(x_e)]₊     (SGD, masked, |ΔW| ≤ 1)
    route x to the memory with the largest Δ(x) ≥ ratio · min_e Δ(x_e) over its edits, else to W

Every `merge_freq / save_freq` complete shards are merged by TIES (trim to the `density` largest
changes, elect each entry's sign by the sum, average the agreeing ones) into one memory whose
threshold is the lowest of theirs (WISE-Retrieve, EasyEdit's LLaMA defaults: mask 0.2, SGD lr 1.0,
70 steps, act ratio 0.88, save every 500 edits, merge every 1000, density 0.53, layer 27 of 32).

Scaled to the model: the margins α, β, γ (5, 20, 10 for LLaMA-2-7B's 4096-wide MLP outputs) are
distances between d-dimensional activations and are scaled by √(d_model / 4096). The irrelevant
input x_irr is a prompt of the CounterFact training split (EasyEdit pairs each edit with its
record's locality prompt, the one it is then scored on). Each edit is one Change holding its own
ΔW entries; the memories and thresholds are derived from the edits present, so an edit undoes
alone from the middle of a stream (later edits keep the changes they made on top of it).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import nn

from ...data import shared_data
from ...models import Model
from ..changes import Change, HookPatch
from ..patches import PatchModule, attach, bypassed, group, register_patch
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.compute import block_output, replay_below, training_mode, weights_require_grad
from .ft import edit_loss, target_batch
from .grace import DEPTH


@dataclass
class WiseParams:
    """EasyEdit's LLaMA-2-7B defaults (see the module doc); `margins`: (α, β, γ) before scaling."""

    mask_ratio: float = 0.2
    lr: float = 1.0
    steps: int = 70
    weight_decay: float = 1e-5
    norm_constraint: float = 1.0
    margins: tuple[float, float, float] = (5.0, 20.0, 10.0)
    act_ratio: float = 0.88
    save_freq: int = 500
    merge_freq: int = 1000
    density: float = 0.53
    irrelevant: int = 500  # training-split prompts to draw each edit's irrelevant input from
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio <= 1 or not 0 < self.density <= 1 or not 0 < self.act_ratio <= 1:
            raise ValueError(f"mask_ratio, density and act_ratio must be in (0, 1], got {self.mask_ratio}, "
                             f"{self.density}, {self.act_ratio}")
        if self.save_freq < 1 or self.merge_freq % self.save_freq:
            raise ValueError(f"merge_freq must be a multiple of save_freq ≥ 1, got {self.merge_freq}, {self.save_freq}")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.lr > 0 or not self.norm_constraint > 0:
            raise ValueError(f"steps must be a positive int, lr and norm_constraint > 0, got {self.steps!r}, "
                             f"{self.lr!r}, {self.norm_constraint!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def shard_mask(rows: int, cols: int, ratio: float, seed: int) -> torch.Tensor:
    """The flat indices of W's entries that shard `seed` may change (a `ratio` of them, at random)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nonzero(torch.rand(rows * cols, generator=g) < ratio).squeeze(1)


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES (Yadav et al. 2023): keep each delta's `density` largest entries, elect every entry's
    sign by the sum of what is kept, and average the kept entries that agree with it."""
    kept = []
    for d in deltas:
        k = max(1, int(density * d.numel()))
        threshold = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        kept.append(torch.where(d.abs() >= threshold, d, torch.zeros_like(d)))
    stacked = torch.stack(kept)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)


@register_patch
class WiseEdit(PatchModule):
    """One edit's part of the side memory: `values` at its shard's mask, `act` (its activation
    score Δ(x_e)). Edits at a site run together (`forward_group`: the router)."""

    shared = True

    def __init__(self, rows: int, cols: int, n: int, shard: int, mask_ratio: float, seed: int, act_ratio: float,
                 save_freq: int, merge_freq: int, density: float, activation: str):
        super().__init__()
        self.settings = dict(rows=rows, cols=cols, n=n, shard=shard, mask_ratio=mask_ratio, seed=seed,
                             act_ratio=act_ratio, save_freq=save_freq, merge_freq=merge_freq, density=density,
                             activation=activation)
        self.values = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.register_buffer("act", torch.tensor(0.0))

    def config(self) -> dict:
        return dict(self.settings)

    def delta(self) -> torch.Tensor:
        """This edit's ΔW `[rows, cols]` (nonzero only at its shard's mask)."""
        s = self.settings
        flat = torch.zeros(s["rows"] * s["cols"], dtype=self.values.dtype, device=self.values.device)
        mask = shard_mask(s["rows"], s["cols"], s["mask_ratio"], s["seed"] + s["shard"]).to(flat.device)
        return flat.index_add(0, mask, self.values).view(s["rows"], s["cols"])

    @classmethod
    def memories(cls, members: list[WiseEdit]) -> list[tuple[torch.Tensor, float]]:
        """(ΔW, threshold) of each side memory: one per shard, complete groups of shards merged."""
        s = members[0].settings
        shards: dict[int, list[WiseEdit]] = {}
        for m in members:
            shards.setdefault(m.settings["shard"], []).append(m)
        per_merge, last = s["merge_freq"] // s["save_freq"], max(shards)
        out, pending = [], []
        for shard in sorted(shards):
            edits = shards[shard]
            delta = torch.stack([m.delta() for m in edits]).sum(0)
            threshold = min(float(m.act) for m in edits) * s["act_ratio"]
            pending.append((shard, delta, threshold))
            group_start = shard - shard % per_merge
            if shard - group_start == per_merge - 1 and shard < last and len(pending) == per_merge:
                out.append((ties_merge([d for _, d, _ in pending], s["density"]), min(t for _, _, t in pending)))
                pending = []
            elif shard - group_start == per_merge - 1 or shard == last:
                out.extend((d, t) for _, d, t in pending)
                pending = []
        return out

    @classmethod
    def forward_group(cls, k: torch.Tensor, v: torch.Tensor, members: list[WiseEdit], cache: dict) -> torch.Tensor:
        """k `[batch, pos, d_mlp]`, v = W k `[batch, pos, d_model]` → each row through the memory it is routed to."""
        if "memories" not in cache:
            cache["memories"] = cls.memories(members)
        act = activation(members[0].settings["activation"])
        out, best = v, torch.zeros(v.shape[0], device=v.device)
        for delta, threshold in cache["memories"]:
            side = v + k.to(delta.dtype) @ delta.T.to(k.device)
            score = (act(side.float()) - act(v.float())).norm(dim=-1).mean(-1)              # Δ(x) per row
            take = (score >= threshold) & (score > best)
            out = torch.where(take[:, None, None], side.to(v.dtype), out)
            best = torch.where(take, score, best)
        return out


def activation(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def hidden_act(model: Model) -> str:
    config = model.hf.config
    return getattr(config, "hidden_act", None) or getattr(config, "activation_function", "silu")


def irrelevant_prompt(params: WiseParams, request: Request, index: int) -> str:
    """A prompt of the training split that is not about the edit's subject (seeded by the edit's place)."""
    records = json.loads(shared_data("counterfact-train.json").read_text())[:params.irrelevant]
    pool = [r["prompt"].format(r["subject"]) if "{}" in r["prompt"] else r["prompt"] for r in records
            if request.subject not in r["prompt"] and r.get("subject") != request.subject]
    if not pool:
        raise ValueError("no irrelevant prompt left in the training split's first records: raise params.irrelevant")
    return random.Random(params.seed + index).choice(pool)


@register
class Wise(Method):
    """WISE: a side memory of one MLP output projection with a router; one Change per edit."""

    name, title, family, Params, layers = "wise", "WISE", "memory", WiseParams, "one"

    def default_layers(self, model: Model, request: Request) -> list[int]:
        """`layer="auto"`: EasyEdit's depth (layer 27 of LLaMA-2-7B's 0..31), not a trace."""
        return [round(DEPTH * (model.n_layers - 1))]

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: WiseParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        (request,), (layer,) = requests, layers
        site = model.mlp_out_proj(layer)
        present = group(model, site, WiseEdit)
        done = list(present.members) if present else []
        shard = len(done) // params.save_freq
        rows, cols = model.d_model, model.d_mlp                                          # ΔW: k [d_mlp] → v [d_model]
        mask = shard_mask(rows, cols, params.mask_ratio, params.seed + shard)
        entry = WiseEdit(rows, cols, len(mask), shard, params.mask_ratio, params.seed, params.act_ratio,
                         params.save_freq, params.merge_freq, params.density, hidden_act(model)).to(model.device)
        before = sum((m.delta() for m in done if m.settings["shard"] == shard), torch.zeros(rows, cols))
        info = train_edit(model, entry, before, site, layer, request, irrelevant_prompt(params, request, len(done)),
                          params)
        ctx.info.update(info, seconds={"wise": time.perf_counter() - t}, shard=shard, parameters_changed=len(mask))
        return [HookPatch(site.name, entry)]


def train_edit(model: Model, entry: WiseEdit, before: torch.Tensor, site, layer: int, request: Request,
               irrelevant: str, params: WiseParams) -> dict:
    """SGD on the edit's entries of ΔW (the shard's earlier edits fixed beneath it), the side memory
    forced on for the edit and the irrelevant prompt; |ΔW| ≤ norm_constraint. Sets `entry.act`."""
    scale = (model.d_model / 4096) ** 0.5
    alpha, beta, gamma = (m * scale for m in params.margins)
    act = activation(entry.settings["activation"])
    ids, mask, spans = target_batch(model, [request])
    irr = model.tokenizer(irrelevant, return_tensors="pt")["input_ids"].to(model.device)
    s = entry.settings
    index = shard_mask(s["rows"], s["cols"], s["mask_ratio"], s["seed"] + s["shard"]).to(model.device)
    values = nn.Parameter(torch.zeros(len(index), device=model.device))
    opt = torch.optim.SGD([values], lr=params.lr, weight_decay=params.weight_decay)
    seen = {}

    def side_memory(k, v):  # training: the side memory on every row, its score noted
        delta = (before.to(k.device).flatten().index_add(0, index, values)).view_as(before)
        side = v + k.float() @ delta.T
        seen["score"] = (act(side) - act(v.float())).norm(dim=-1).mean(-1)
        return side.to(v.dtype)

    losses = []
    with weights_require_grad(model, False), training_mode(model, bf16=False), contextlib.ExitStack() as stack:
        edit_below = block_output(model, layer - 1, ids, mask) if layer > 0 else None
        irr_below = block_output(model, layer - 1, irr, torch.ones_like(irr)) if layer > 0 else None
        stack.enter_context(bypassed(model, site, WiseEdit))  # only this shard's memory, forced on
        stack.enter_context(_call_patch(model, site, side_memory))
        stack.enter_context(torch.enable_grad())
        for _ in range(params.steps):
            with replay_below(model, layer, edit_below) if layer > 0 else contextlib.nullcontext():
                edit = edit_loss(model, ids, mask, spans, "target_new")
            in_scope = seen["score"][0]
            with replay_below(model, layer, irr_below) if layer > 0 else contextlib.nullcontext():
                with model.record([model.mlp_out(layer)], stop=True):
                    model.hf(input_ids=irr)
            out_scope = seen["score"][0]
            margin = torch.relu(out_scope - in_scope + gamma) + torch.relu(out_scope - alpha) + torch.relu(beta - in_scope)
            loss = edit + margin
            (values.grad,) = torch.autograd.grad(loss, [values])
            opt.step()
            with torch.no_grad():  # |ΔW| ≤ c for the shard's whole change
                total = before.to(values.device).flatten()[index] + values
                values.add_(total.clamp(-params.norm_constraint, params.norm_constraint) - total)
            losses.append(float(loss.detach()))
            if float(edit.detach()) < 1e-2 and float(margin.detach()) == 0:
                break
    entry.values.data.copy_(values.detach())
    entry.act.fill_(float(in_scope.detach()))
    return {"loss": losses, "steps": len(losses), "in_scope": float(in_scope), "out_scope": float(out_scope)}


@contextlib.contextmanager
def _call_patch(model: Model, site, fn):
    """`fn(k, v)` at a call site for the duration of the block."""
    class _Fn(PatchModule):
        def forward(self, k, v):
            return fn(k, v)

    handle = attach(model, site, _Fn())
    try:
        yield
    finally:
        handle.remove()
