"""WISE (Wang et al., NeurIPS 2024): edits go into a side memory — a copy of one MLP output
projection — and a router sends an input there only when the side memory's activation on it
stands out.

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="wise")   # layer 25 of 30
    >>> tl.evaluate(model, "zsre", method="wise", mode="sequential")

Side memory W' = W + ΔW_s at `blocks.{l}.mlp_out_proj` (key k, value v = W k); shard s takes the
edits s·save_freq … (s+1)·save_freq − 1 and may only change a random `mask_ratio` of W's entries:

    Δ(x) = max_t ‖σ(W' k_t) − σ(W k_t)‖              activation score (σ: the model's MLP activation)
    L = L_edit + [Δ(x_irr) − Δ(x_e) + γ]₊ + [Δ(x_irr) − α]₊ + [β − Δ(x_e)]₊     (SGD, masked, |ΔW| ≤ 1)
    route x to the memory with the largest Δ(x) ≥ ratio · min_e Δ(x_e) over its edits, else to W

x_e: the edit's prompt and target behind each of the context prefixes (ROME's, as EasyEdit);
x_irr: `irrelevant_rows` prompts of the CounterFact training split (EasyEdit pairs each edit with
its record's locality prompt, the one it is then scored on). Δ takes the largest distance over a
row's real tokens (the attention mask, so padding never routes) where EasyEdit takes the mean
below 100 tokens: on this 1536-wide MLP the mean separated edits from unrelated prompts too little
(8 training-split zsRE edits: reliability 67 %, 16 % of unrelated prompts routed, against 100 %
and 0.3 % with the max). In training, Δ(x_e) is taken over each edit row's prompt positions only
and an edit's threshold is `act_ratio` × the smallest Δ(x_e) of its rows, where EasyEdit takes the
mean over the rows, answer included: the router is asked on the prompt alone, and with the mean
the plain prompt scored below its own edit's threshold (zsRE record 500: 63 against 83), so a
single edit was not routed at all. Every `merge_freq / save_freq` complete shards are merged by TIES (trim to the `density` largest changes, elect each entry's sign by the sum, average
the agreeing ones) into one memory whose threshold is the lowest of theirs (WISE-Retrieve).

Defaults: EasyEdit's LLaMA-2-7B ones (mask 0.2, 70 SGD steps at lr 1.0, |ΔW| ≤ 1, act ratio 0.88,
save every 500 edits, merge every 1000, density 0.53, layer 27 of 32), scaled to the model where
they are sizes: the margins α, β, γ (5, 20, 10) are distances between d_model-wide activations
and are scaled by √(d_model / 4096). Shards keep EasyEdit's 500 edits: scaling them to this
model's 51× smaller memory (shards of 10, merged in pairs) was measured worse (benchmarks/README).
Training runs under bf16 autocast where the device multiplies it natively (the scores in float32). Each edit is one Change holding its own
ΔW entries; memories and thresholds are derived from the edits present, so an edit undoes alone
from the middle of a stream.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch
from torch import nn

from ...data import shared_data
from ...models import Model
from ..changes import Change, HookPatch
from ..patches import PatchModule, attach, bypassed, group, register_patch
from ..registry import Context, Method, register
from ..requests import Request
from ..toolkit.compute import replaying_below, training_mode, uses_bf16, weights_require_grad
from ..toolkit.keys import context_templates
from .ft import edit_loss
from .grace import easyedit_layer


@dataclass
class WiseParams:
    """See the module doc; `margins`: (α, β, γ) before scaling; `irrelevant`: how many prompts of the
    training split each edit's irrelevant input is drawn from."""

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
    irrelevant: int = 500
    irrelevant_rows: int = 3
    bf16: bool = True  # autocast where native (compute.uses_bf16)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio <= 1 or not 0 < self.density <= 1 or not 0 < self.act_ratio <= 1:
            raise ValueError(f"mask_ratio, density and act_ratio must be in (0, 1], got {self.mask_ratio}, "
                             f"{self.density}, {self.act_ratio}")
        if not isinstance(self.save_freq, int) or self.save_freq < 1 or self.merge_freq % self.save_freq:
            raise ValueError(f"merge_freq must be a multiple of save_freq, an int ≥ 1, got {self.merge_freq!r}, "
                             f"{self.save_freq!r}")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.lr > 0 or not self.norm_constraint > 0:
            raise ValueError(f"steps must be a positive int, lr and norm_constraint > 0, got {self.steps!r}, "
                             f"{self.lr!r}, {self.norm_constraint!r}")
        if len(self.margins) != 3 or min(self.margins) < 0:
            raise ValueError(f"margins must be three numbers ≥ 0 (α, β, γ), got {self.margins!r}")

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


def position_distances(k: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, act, mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The side memory's output v + k ΔWᵀ `[batch, pos, d_model]` and ‖σ(W'k) − σ(Wk)‖ at each
    position `[batch, pos]`, 0 where `mask` `[batch, ≥pos]` marks padding (None: every position real)."""
    with torch.autocast(k.device.type, enabled=False):
        side = v.float() + k.float() @ delta.float().T
    distance = (act(side) - act(v.float())).norm(dim=-1)                                   # [batch, pos]
    if mask is None or mask.shape[0] != distance.shape[0] or mask.shape[1] < distance.shape[1]:
        return side, distance
    return side, distance * mask[:, -distance.shape[1]:].to(distance.dtype)               # a cached step: its own positions


def activation_score(k: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, act, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The side memory's output `[batch, pos, d_model]` and Δ per row `[batch]`: the largest
    `position_distances` over the row's real positions."""
    side, distance = position_distances(k, v, delta, act, mask)
    return side, distance.amax(-1)


@register_patch
class WiseEdit(PatchModule):
    """One edit's part of the side memory: `values` at its shard's mask, `act` (its activation
    score Δ(x_e)). Edits at a site run together (`forward_group`: the router)."""

    shared, reads_mask = True, True

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

    def index(self) -> torch.Tensor:
        s = self.settings
        return shard_mask(s["rows"], s["cols"], s["mask_ratio"], s["seed"] + s["shard"]).to(self.values.device)

    def delta(self) -> torch.Tensor:
        """This edit's ΔW `[rows, cols]` (nonzero only at its shard's mask)."""
        s = self.settings
        flat = torch.zeros(s["rows"] * s["cols"], dtype=self.values.dtype, device=self.values.device)
        return flat.index_add(0, self.index(), self.values).view(s["rows"], s["cols"])

    @classmethod
    def memories(cls, members: list[WiseEdit]) -> list[tuple[torch.Tensor, float]]:
        """(ΔW, threshold) of each side memory: one per shard, each complete group of
        merge_freq / save_freq shards merged into one."""
        s = members[0].settings
        shards: dict[int, list[WiseEdit]] = {}
        for m in members:
            shards.setdefault(m.settings["shard"], []).append(m)
        per_merge = s["merge_freq"] // s["save_freq"]
        memories = {i: (torch.stack([m.delta() for m in edits]).sum(0),
                        min(float(m.act) for m in edits) * s["act_ratio"]) for i, edits in shards.items()}
        out = []
        for start in sorted({i - i % per_merge for i in memories}):
            block = [memories[i] for i in range(start, start + per_merge) if i in memories]
            complete = len(block) == per_merge and all(len(shards[i]) == s["save_freq"]
                                                       for i in range(start, start + per_merge))
            if complete and per_merge > 1:
                out.append((ties_merge([d for d, _ in block], s["density"]), min(t for _, t in block)))
            else:
                out.extend(block)
        return out

    @classmethod
    def forward_group(cls, k: torch.Tensor, v: torch.Tensor, members: list[WiseEdit], cache: dict) -> torch.Tensor:
        """k `[batch, pos, d_mlp]`, v = W k `[batch, pos, d_model]` → each row through the memory it is routed to."""
        if "memories" not in cache:
            cache["memories"] = cls.memories(members)
        act, mask = activation(members[0].settings["activation"]), cache.get("attention_mask")
        out, best = v, torch.zeros(v.shape[0], device=v.device)
        for delta, threshold in cache["memories"]:
            side, score = activation_score(k, v, delta.to(k.device), act, mask)
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


@lru_cache(maxsize=2)
def training_prompts(n: int) -> tuple[str, ...]:
    """The prompts of the CounterFact training split's first `n` records, subjects filled in."""
    records = json.loads(shared_data("counterfact-train.json").read_text())[:n]
    return tuple(r["prompt"].format(r["subject"]) if "{}" in r["prompt"] else r["prompt"] for r in records)


def irrelevant_prompts(params: WiseParams, request: Request, index: int) -> list[str]:
    """`params.irrelevant_rows` prompts of the training split not about the edit's subject (seeded by the edit's place)."""
    pool = [t for t in training_prompts(params.irrelevant) if request.subject not in t]
    if not pool:
        raise ValueError("no irrelevant prompt left in the training split's first records: raise params.irrelevant")
    return random.Random(params.seed + index).sample(pool, params.irrelevant_rows)


@register
class Wise(Method):
    """WISE: a side memory of one MLP output projection with a router; one Change per edit."""

    name, title, family, Params, layers = "wise", "WISE", "memory", WiseParams, "one"

    def default_layers(self, model: Model, request: Request) -> list[int]:
        """`layer="auto"`: EasyEdit's depth (`easyedit_layer`), not a trace."""
        return [easyedit_layer(model)]

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: WiseParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        (request,), (layer,) = requests, layers
        site = model.mlp_out_proj(layer)
        present = group(model, site, WiseEdit)
        done = list(present.members) if present else []
        shard = len(done) // params.save_freq
        rows, cols = model.d_model, model.d_mlp                                          # ΔW: k [d_mlp] → v [d_model]
        entry = WiseEdit(rows, cols, len(shard_mask(rows, cols, params.mask_ratio, params.seed + shard)), shard,
                         params.mask_ratio, params.seed, params.act_ratio, params.save_freq, params.merge_freq,
                         params.density, hidden_act(model)).to(model.device)
        before = sum((m.delta() for m in done if m.settings["shard"] == shard), torch.zeros(rows, cols))
        irrelevant = irrelevant_prompts(params, request, len(done))
        info = train_edit(model, entry, before.to(model.device), layer, request, irrelevant, params)
        ctx.info.update(info, seconds={"wise": time.perf_counter() - t}, shard=shard,
                        parameters_changed=entry.values.numel())
        return [HookPatch(site.name, entry)]


def edit_batch(model: Model, request: Request, irrelevant: list[str]):
    """Rows: the edit behind each context prefix (prompt + target) and, last, the irrelevant prompt.
    Returns right-padded ids and mask `[rows, pos]` and the (prompt length, target ids) of the edit rows."""
    pad = model.tokenizer.pad_token_id
    rows, spans = [], []
    for template in context_templates(model):
        edit = replace(request, prompt=template.format(request.prompt))
        prompt, target = model.tokenizer(edit.text)["input_ids"], model.target_ids(edit.text, edit.target)
        rows.append(prompt + target)
        spans.append((len(prompt), target))
    rows.extend(model.tokenizer(text)["input_ids"] for text in irrelevant)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    return ids, mask, spans


def train_edit(model: Model, entry: WiseEdit, before: torch.Tensor, layer: int, request: Request,
               irrelevant: list[str], params: WiseParams) -> dict:
    """SGD on the edit's entries of ΔW (the shard's earlier edits fixed beneath it), the side memory
    on for every row; |ΔW| ≤ norm_constraint. Sets `entry.values` and `entry.act` (the smallest Δ(x_e)
    of the edit's rows, over their prompt positions)."""
    alpha, beta, gamma = (m * (model.d_model / 4096) ** 0.5 for m in params.margins)
    act = activation(entry.settings["activation"])
    ids, mask, spans = edit_batch(model, request, irrelevant)
    scored = mask.clone()                        # Δ(x_e) over the prompt's positions: what the router sees when asked
    for row, (prompt_length, _) in enumerate(spans):
        scored[row, prompt_length:] = 0
    index = entry.index()
    values = nn.Parameter(torch.zeros(len(index), device=model.device))
    opt = torch.optim.SGD([values], lr=params.lr, weight_decay=params.weight_decay)
    seen = {}

    class SideMemory(PatchModule):  # training: the side memory on every row, its scores noted
        def forward(self, k, v):
            delta = before.flatten().index_add(0, index, values).view_as(before)
            side, seen["score"] = activation_score(k, v, delta, act, scored)
            return side.to(v.dtype)

    losses = []
    site = model.mlp_out_proj(layer)
    bf16 = uses_bf16(model, params.bf16)
    with weights_require_grad(model, bf16), training_mode(model, bf16), bypassed(model, site, WiseEdit):
        handle = attach(model, site, SideMemory())
        try:
            with replaying_below(model, layer, ids, mask), torch.enable_grad():
                for _ in range(params.steps):
                    edit = edit_loss(model, ids, mask, spans, "target_new")
                    in_scope, out_scope = seen["score"][:len(spans)], seen["score"][len(spans):]
                    # [Δ(x_irr) − Δ(x_e) + γ]₊ + [Δ(x_irr) − α]₊ + [β − Δ(x_e)]₊, averaged over the pairs of rows
                    margin = (torch.relu(out_scope[None, :] - in_scope[:, None] + gamma).mean()
                              + torch.relu(out_scope - alpha).mean() + torch.relu(beta - in_scope).mean())
                    loss = edit + margin
                    (values.grad,) = torch.autograd.grad(loss, [values])
                    opt.step()
                    with torch.no_grad():  # |ΔW| ≤ c for the shard's whole change
                        total = before.flatten()[index] + values
                        values.add_(total.clamp(-params.norm_constraint, params.norm_constraint) - total)
                    losses.append(float(loss.detach()))
                    if float(edit.detach()) < 1e-2 and float(margin.detach()) == 0:
                        break
        finally:
            handle.remove()
    in_scope, out_scope = in_scope.detach(), out_scope.detach()
    entry.values.data.copy_(values.detach())
    entry.act.fill_(float(in_scope.min()))
    return {"loss": losses, "steps": len(losses), "in_scope": float(in_scope.mean()), "out_scope": float(out_scope.max()),
            "edit_loss": float(edit.detach()), "margins": [alpha, beta, gamma]}
