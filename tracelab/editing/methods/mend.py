"""MEND (Mitchell et al., ICLR 2022): a learned transform of the fine-tuning gradient's rank-one factors.

    >>> tl.train_editor("mend", model, data="../shared/data/zsre-sample.json", limit=500)   # once
    >>> tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
    ...         method="mend")                          # ParamDeltas at the last three MLP output projections

For a linear layer W (input u, output y) the gradient of the edit loss is a sum of rank-one terms,
∇W L = Σ_t δ_t u_tᵀ (δ_t = ∂L/∂y_t, one per token). MEND sends each pair through an editor network g
(one per weight shape, shared by the layers of that shape, with a per-layer scale s_l and offset o_l):

    z_t = ([u_t; δ_t] − μ) / σ                         μ, σ: per feature, over training edits' tokens
    [ũ_t; δ̃_t] = h + U relu(V h + b),  h = s_l ⊙ z_t + o_l       U = 0 at the start: g starts as identity
    ΔW_l = −α_l Σ_t δ̃_t ũ_tᵀ                          α_l: a learned step size per layer
    L = c_edit · NLL(target | paraphrase, W + ΔW) + c_loc · KL(p_W(·|x_loc) ‖ p_{W+ΔW}(·|x_loc))

Defaults are EasyEdit's MEND training configuration (lr 1e-6, edit lr 1e-4, lr of the step sizes
1e-4, c_edit 0.1, c_loc 1, rank 1920, one hidden layer, identity init, ReLU, gradient clip 100, ten
edits a step). Differences, for this setting: μ and σ are computed once from the first 100 training
edits' tokens instead of updated during training (so data-parallel ranks share them), the layers
are the MLP output projections only (the issue's choice; EasyEdit also edits the input ones), and
each edit of a batch is applied on its own (MEND batches them into one update), which is how it is
used in evaluation and what makes data-parallel training exact.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...models import Model
from ..changes import Change, ParamDelta
from ..registry import Context, Method, register, require_positive
from ..requests import Request
from ..toolkit.answers import (answer_batch, greedy_answers, locality_pair, paraphrase, row_nll, target_batch,
                               token_accuracy)


@dataclass
class MendParams:
    lr: float = 1e-6           # the editor network (Adam)
    edit_lr: float = 1e-4      # α_l at the start
    lr_lr: float = 1e-4        # α_l's own learning rate
    c_edit: float = 0.1
    c_loc: float = 1.0
    rank: int = 1920
    norm_edits: int = 100      # training edits whose tokens give μ and σ
    checkpoint: str | None = None  # a checkpoint path; None: the newest for this model and layers

    def __post_init__(self) -> None:
        require_positive(self, numbers=("lr", "edit_lr", "lr_lr"), counts=("rank", "norm_edits"))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint"}


class GradientTransform(nn.Module):
    """g for one weight shape: `[u; δ]` `[tokens, d_in + d_out]` → `(ũ, δ̃)`, layer `i` of `n_layers`."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_layers: int):
        super().__init__()
        self.d_in, width = d_in, d_in + d_out
        self.down, self.up = nn.Linear(width, rank), nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight), nn.init.zeros_(self.up.bias)            # identity at the start
        self.scale = nn.Parameter(torch.ones(n_layers, width))
        self.offset = nn.Parameter(torch.zeros(n_layers, width))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = (torch.cat([u, delta], -1) - self.mean) / (self.std + 1e-7)
        h = self.scale[i] * z + self.offset[i]
        out = h + self.up(F.relu(self.down(h)))
        return out[..., :self.d_in], out[..., self.d_in:]


class MendEditor(nn.Module):
    """The transforms (one per shape) and the step sizes α_l of the edited layers."""

    def __init__(self, model: Model, layers: list[int], params: MendParams):
        super().__init__()
        self.layers = list(layers)
        self.shapes = [_shape(model, l) for l in layers]
        self.nets = nn.ModuleDict({f"{a}x{b}": GradientTransform(a, b, params.rank, self.shapes.count((a, b)))
                                   for a, b in dict.fromkeys(self.shapes)})
        self.alpha = nn.Parameter(torch.full((len(layers),), params.edit_lr))

    def factors(self, raw: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, tuple]:
        """Per layer `(Ũ [R, P, d_in], D̃ [R, P, d_out], α)`; tokens without gradient stay zero."""
        out = {}
        for j, l in enumerate(self.layers):
            u, delta = raw[l]
            a, b = self.shapes[j]
            live = (u != 0).any(-1) & (delta != 0).any(-1)                          # [R, P]
            nu, nd = self.nets[f"{a}x{b}"](u[live], delta[live], self.shapes[:j].count((a, b)))
            U = u.new_zeros(u.shape).masked_scatter(live[..., None], nu)
            D = delta.new_zeros(delta.shape).masked_scatter(live[..., None], nd)
            out[l] = (U, D, self.alpha[j])
        return out


def _shape(model: Model, layer: int) -> tuple[int, int]:
    w = model.mlp_out_weight(layer)
    d_out, d_in = w.matrix.shape
    return int(d_in), int(d_out)


def _module(model: Model, layer: int) -> nn.Module:
    return model.module(model.mlp_out_weight(layer).name.rpartition(".")[0])


def gradient_factors(model: Model, layers: list[int], ids, mask, spans) -> dict[int, tuple]:
    """Per layer, u (its input) and δ (the gradient of Σ_rows edit NLL at its output), `[R, P, d]`."""
    seen = {}

    def keep(layer):
        def hook(module, args, output):
            seen[layer] = (args[0].detach().float(), output.detach().requires_grad_(True))
            return seen[layer][1]
        return hook

    handles = [_module(model, l).register_forward_hook(keep(l)) for l in layers]
    try:
        with torch.enable_grad(), model.native():
            loss = row_nll(model.hf(input_ids=ids, attention_mask=mask).logits, spans).sum()
            grads = torch.autograd.grad(loss, [seen[l][1] for l in layers])
    finally:
        for h in handles:
            h.remove()
    return {l: (seen[l][0], g.float()) for l, g in zip(layers, grads)}


@contextlib.contextmanager
def edited(model: Model, factors: dict[int, tuple]):
    """Inside the block row r of a forward computes with W_l − α_l D̃_rᵀ Ũ_r at each layer."""
    def add(U, D, alpha):
        def hook(module, args, output):
            x = args[0].float()
            return output + (-alpha * torch.bmm(torch.bmm(x, U.transpose(1, 2)), D)).to(output.dtype)
        return hook

    handles = [_module(model, l).register_forward_hook(add(*f)) for l, f in factors.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@register
class MEND(Method):
    """MEND: a trained editor turns one edit's gradient into `ParamDelta`s (rank ≤ tokens)."""

    name, title, family, Params, layers = "mend", "MEND", "meta-learned", MendParams, "range"
    trained, val_metrics = True, ("reliability", "generality", "locality")

    def default_layers(self, model: Model, request: Request | None) -> list[int]:
        """The last three layers' MLP output projections, as the paper."""
        return list(range(max(0, model.n_layers - 3), model.n_layers))

    # ---- training (tracelab.training) ----------------------------------------------------------
    def init_editor(self, model: Model, layers: list[int], params: MendParams, records) -> MendEditor:
        editor = MendEditor(model, layers, params).to(model.device)
        if records:
            _normalisation(model, editor, records[:params.norm_edits])
        return editor

    def optimizer_groups(self, editor: MendEditor, params: MendParams) -> list[dict]:
        return [{"params": list(editor.nets.parameters()), "lr": params.lr},
                {"params": [editor.alpha], "lr": params.lr_lr}]

    def training_loss(self, model: Model, editor: MendEditor, layers, records, params: MendParams):
        if not records:
            return sum(p.sum() * 0 for p in editor.parameters()), {}
        factors = self.edit_factors(model, editor, layers, [r.request for r in records])
        ids, mask, spans = answer_batch(model, [(paraphrase(r), r.request.target) for r in records])
        loc_ids, loc_mask, _ = answer_batch(model, [locality_pair(r) for r in records])
        with torch.no_grad(), model.native():
            base = model.hf(input_ids=loc_ids, attention_mask=loc_mask).logits.float().log_softmax(-1)
        with edited(model, factors), model.native():
            nll = row_nll(model.hf(input_ids=ids, attention_mask=mask).logits, spans)
            after = model.hf(input_ids=loc_ids, attention_mask=loc_mask).logits.float().log_softmax(-1)
        kl = (base.exp() * (base - after)).sum(-1)                                     # [R, P]
        kl = (kl * loc_mask).sum(1) / loc_mask.sum(1)
        loss = (params.c_edit * nll + params.c_loc * kl).sum()
        return loss, {"nll": float(nll.detach().mean()), "kl": float(kl.detach().mean())}

    def validate(self, model: Model, editor: MendEditor, layers, records, params: MendParams) -> list[dict]:
        factors = self.edit_factors(model, editor, layers, [r.request for r in records])
        prompt = answer_batch(model, [(r.request.text, r.request.target) for r in records])
        para = answer_batch(model, [(paraphrase(r), r.request.target) for r in records])
        loc = answer_batch(model, [locality_pair(r) for r in records])
        with model.native():
            before = greedy_answers(model, *loc)
            with edited(model, factors):
                rel, gen, after = (greedy_answers(model, *batch) for batch in (prompt, para, loc))
        return [{"reliability": token_accuracy(r, prompt[2][i][1]), "generality": token_accuracy(g, para[2][i][1]),
                 "locality": token_accuracy(a, b)} for i, (r, g, a, b) in enumerate(zip(rel, gen, after, before))]

    def edit_factors(self, model: Model, editor: MendEditor, layers: list[int], requests) -> dict[int, tuple]:
        """Per layer the factors `(U [R, P, d_in], D [R, P, d_out], α)` of each request's update
        ΔW_r = −α D_rᵀ U_r (what `edited` runs and `factored_deltas` writes)."""
        return editor.factors(gradient_factors(model, layers, *target_batch(model, requests)))

    # ---- editing (tl.edit) -----------------------------------------------------------------------
    def apply(self, model: Model, requests: list[Request], layers: list[int], params: MendParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        editor = ctx.editor
        if editor.layers != list(layers):
            raise ValueError(f"the {self.title} editor was trained for layers {editor.layers}, not {layers}")
        with torch.no_grad():
            changes = factored_deltas(model, self.edit_factors(model, editor, layers, requests))
        ctx.info.update(seconds={self.name: time.perf_counter() - t}, rank=max(c.factors[0].shape[1] for c in changes),
                        parameters_changed=sum(model.mlp_out_weight(l).matrix.numel() for l in layers))
        return changes


def factored_deltas(model: Model, factors: dict[int, tuple]) -> list[ParamDelta]:
    """One request's update ΔW_l = −α D̃ᵀ Ũ as factored `ParamDelta`s (the rows that carry a gradient)."""
    changes = []
    for l, (U, D, alpha) in factors.items():
        live = ((U != 0).any(-1) & (D != 0).any(-1))[0]
        out_side, in_side = -alpha * D[0, live].T, U[0, live].T                         # [d_out, t], [d_in, t]
        w = model.mlp_out_weight(l)
        pair = (out_side, in_side) if w.layout == "out_in" else (in_side, out_side)
        changes.append(ParamDelta.build(model, w.name, factors=(pair[0].detach(), pair[1].detach()), layer=l))
    return changes


@torch.no_grad()
def _normalisation(model: Model, editor: MendEditor, records, batch: int = 10) -> None:
    """μ and σ of each shape's [u; δ] over the live tokens of `records`' edits."""
    rows = {key: [] for key in editor.nets}
    for i in range(0, len(records), batch):
        raw = gradient_factors(model, editor.layers, *target_batch(model, [r.request for r in records[i:i + batch]]))
        for l, (a, b) in zip(editor.layers, editor.shapes):
            u, delta = raw[l]
            live = (u != 0).any(-1) & (delta != 0).any(-1)
            rows[f"{a}x{b}"].append(torch.cat([u[live], delta[live]], -1))
    for key, net in editor.nets.items():
        z = torch.cat(rows[key])
        net.mean.copy_(z.mean(0)), net.std.copy_(z.std(0))
