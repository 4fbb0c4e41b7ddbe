"""T-Patcher (Huang et al., ICLR 2023, "one mistake worth one neuron"): neurons added to one MLP,
trained to fire on the edit and stay silent on everything else.

    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="t-patcher")   # last layer
    >>> tl.evaluate(model, "zsre", method="t-patcher", mode="sequential")

Each edit adds patch neurons to the MLP of layer l (its input x, its output y), one per target token
the model gets wrong (teacher forced; at most `max_neurons`), neuron i keyed at the position p_i
that predicts its token, as the paper's code does for generation (`count_error_nums`):

    y ← y + relu(a) V,   a = x Kᵀ + b                      keys K [n, d], bias b [n], values V [n, d]
    L = L_edit + α L_act + μ L_mem                          (Adam, until the edit holds and memory is silent)
    L_edit = −mean_j log p(y_j | x, y_<j)                   the target, teacher forced
    L_act  = mean_i exp(m_act − a_e,i)                      a_e,i: neuron i's activation at p_i
    L_mem  = mean_top-k exp(a_m − a_e + m₁) + mean_top-k exp(a_m − m₂)   a_m: on the memory set

Defaults are the paper's code (α 1, μ 5, m_act 0, m₁ 3, m₂ −3, top-k 1000 memory terms, at most 5
neurons per edit, Adam lr 1e-2 with weight decay 0.01, keys started at q/‖q‖² so that a_e = 1,
values ×10, and `update_memory`: the states of the earlier edits join the memory set, so a new patch
stays silent on them). A request the model already answers adds nothing (`tl.edit` skips it; the
paper edits only mistakes). Scaled to this setting: the memory set is the MLP inputs at every token of `memory`
prompts of the CounterFact training split (the paper: 40,000 BART states), and the patch neuron is a ReLU (a
Llama MLP is gated, so it has no single-key neuron to copy; below zero a ReLU neuron adds exactly
nothing, which is what the memory loss's margin asks for). Values start at zero (the paper: random),
so the model is unchanged until training moves them.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ...data import shared_data
from ...models import Model
from ..changes import Change, HookPatch
from ..patches import PatchModule, attach, register_patch
from ..registry import Context, Method, register, require_positive
from ..requests import Request
from ..toolkit.compute import replaying_below, training_mode, uses_bf16, weights_require_grad
from ..toolkit.answers import greedy_answers, target_batch
from .ft import edit_loss


@dataclass
class TPatcherParams:
    """`max_neurons`: at most this many neurons per edit (one per wrongly predicted target token);
    `steps`: at most this many Adam steps (it stops once the target is the greedy continuation and
    no memory state fires); `memory`: how many training-split prompts give the memory set, or a
    path to a JSON list of texts."""

    max_neurons: int = 5
    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 0.01
    act_weight: float = 1.0
    memory_weight: float = 5.0
    act_margin: float = 0.0
    margin_1: float = 3.0
    margin_2: float = -3.0
    top_k: int = 1000
    amplify: float = 10.0
    memory: int | str = 500
    bf16: bool = True  # the model's matmuls in bf16 autocast where native (compute.uses_bf16); the patch's stay float32

    def __post_init__(self) -> None:
        require_positive(self, counts=("max_neurons", "steps", "top_k"))
        if not self.lr > 0 or not self.amplify > 0:
            raise ValueError(f"lr and amplify must be > 0, got lr={self.lr!r}, amplify={self.amplify!r}")
        if self.margin_2 > 0 or self.margin_1 < 0:
            raise ValueError(f"margin_1 must be ≥ 0 and margin_2 ≤ 0 (memory below both), got {self.margin_1}, "
                             f"{self.margin_2}")

    def to_dict(self) -> dict:
        return asdict(self)


@register_patch
class PatchNeurons(PatchModule):
    """`n` neurons added to an MLP: `forward(x, y) = y + relu(x Kᵀ + b) V` (x, y `[batch, pos, d]`).
    The patches at one MLP run as one wider layer (`forward_group`): one matmul, not one hook per edit."""

    shared = True

    def __init__(self, width: int, n: int = 1):
        super().__init__()
        self.keys = nn.Parameter(torch.zeros(n, width), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.values = nn.Parameter(torch.zeros(n, width), requires_grad=False)

    def config(self) -> dict:
        return {"width": self.keys.shape[1], "n": self.keys.shape[0]}

    @property
    def neurons(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys `[n, d]`, bias `[n]`, values `[n, d]`."""
        return self.keys, self.bias, self.values

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """a = x Kᵀ + b `[..., n]` (before the ReLU)."""
        return _preactivations(x, self.keys, self.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_group(x, y, [self], {})

    @classmethod
    def forward_group(cls, x: torch.Tensor, y: torch.Tensor, members: list[PatchNeurons], cache: dict) -> torch.Tensor:
        """y + relu(x Kᵀ + b) V with K, b, V the members' neurons stacked `[N, d]`, `[N]`, `[N, d]`. The
        stack is kept until a member joins or leaves; a patch in training (keys that require grad) is read live."""
        live = [m for m in members if m.keys.requires_grad]
        fixed = [m for m in members if not m.keys.requires_grad]
        if cache.get("fixed") != len(fixed):  # fixed neurons change only when a patch joins, leaves or stops training
            cache["fixed"], cache["neurons"] = len(fixed), _stacked([m.neurons for m in fixed])
        parts = ([cache["neurons"]] if fixed else []) + [m.neurons for m in live]
        keys, bias, values = _stacked(parts) if live else cache["neurons"]
        a = _preactivations(x, keys, bias)                                               # [batch, pos, N]
        return y + (torch.relu(a) @ values).to(y.dtype)


def _preactivations(x: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """a = x Kᵀ + b `[..., N]`, in float32 whatever the caller's autocast: training and use see the same a."""
    with torch.autocast(x.device.type, enabled=False):
        return x.float() @ keys.T + bias


def _stacked(neurons: list[tuple]) -> tuple[torch.Tensor, ...]:
    """(keys, bias, values) triples, one after another: keys `[N, d]`, bias `[N]`, values `[N, d]`."""
    return tuple(torch.cat(part) for part in zip(*neurons))


def memory_texts(memory: int | str, requests: list[Request]) -> list[str]:
    """The memory set's prompts: the first `memory` prompts of the CounterFact training split that
    are not an edit's prompt and do not name its subject (a given JSON list of texts that does is
    refused: ValueError)."""
    if isinstance(memory, int):
        source = shared_data("counterfact-train.json")
        unrelated = (r["prompt"] for r in json.loads(source.read_text())
                     if not any(r["prompt"] == q.text or q.subject in r["prompt"] for q in requests))
        return list(itertools.islice(unrelated, memory))
    else:
        texts = json.loads(Path(memory).read_text())
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{memory} must hold a JSON list of texts")
    for r in requests:
        clash = [t for t in texts if t == r.text or r.subject in t]
        if clash:
            raise ValueError(f"the memory set overlaps the edit of {r.subject!r} ({clash[0]!r}): memory must be "
                             "unrelated text, never the edited facts")
    return texts


_MEMORY: dict = {}  # (what the states depend on, texts, bf16) -> [tokens, d]
_EDITED: dict = {}  # what the states depend on -> {an earlier edit's request: [tokens, d]}


@torch.no_grad()
def mlp_input(model: Model, layer: int, ids: torch.Tensor, mask: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The MLP input of `layer` at every position of `ids` `[batch, pos, d_model]` (float32; `bf16`:
    the forward's matmuls in bf16 autocast); the forward stops at that MLP."""
    seen = {}
    handle = model.module(model.mlp(layer).module).register_forward_pre_hook(
        lambda m, args: seen.__setitem__("x", args[0]))
    try:
        with model.record([model.mlp_out(layer)], stop=True), torch.autocast(model.device.type, torch.bfloat16,
                                                                             enabled=bf16):
            model.hf(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return seen["x"].reshape(*ids.shape, -1).float()


def mlp_inputs(model: Model, layer: int, texts: list[str], batch_size: int = 64, bf16: bool = False) -> torch.Tensor:
    """The MLP input of `layer` at every (non-pad) token of `texts` `[tokens, d_model]`."""
    from ...models.text import padded

    out = []
    for i in range(0, len(texts), batch_size):
        batch = padded(model, texts[i:i + batch_size])
        x = mlp_input(model, layer, batch["input_ids"], batch["attention_mask"], bf16)
        out.append(x[batch["attention_mask"].bool()])
    return torch.cat(out)


def edited_states(model: Model, layer: int, ctx: Context, request: Request, batch_size: int = 64) -> torch.Tensor:
    """The MLP inputs of `layer` at every token of the earlier T-Patcher edits' prompt + target at
    this layer `[tokens, d_model]` (the paper's `update_memory`); an earlier edit of the same subject
    is left out (the new patch overrides it). Each edit's states are computed once while what they
    depend on stays (a stream's patches sit at `layer`, after these inputs)."""
    earlier = [r for e in ctx.journal.edits if e.method == TPatcher.name and e.layers == [layer] and e.changes
               for r in e.requests if r.subject != request.subject]
    key = _states_key(model, layer, ctx)
    if key not in _EDITED:
        _EDITED.clear()
        _EDITED[key] = {}
    states = _EDITED[key]
    missing = list(dict.fromkeys(r for r in earlier if r not in states))
    for i in range(0, len(missing), batch_size):
        ids, mask, _ = target_batch(model, missing[i:i + batch_size])
        x = mlp_input(model, layer, ids, mask)
        states.update((r, x[j][mask[j].bool()]) for j, r in enumerate(missing[i:i + batch_size]))
    return torch.cat([torch.zeros(0, model.d_model, device=model.device), *(states[r] for r in earlier)])


def _states_key(model: Model, layer: int, ctx: Context) -> tuple:
    """What the MLP inputs of `layer` depend on: weight edits and hooks that run before the layer's
    MLP (prompt contexts are not asked here), and the weights as stored: where each is and how often
    it was written in place (torch's version counter), which any change to them moves, without
    reading them."""
    changes = tuple(c.hash_after for e in ctx.journal.edits for c in e.changes if c.kind == "param" or c.kind == "hook"
                    and (model.site(c.target).layer < layer or c.target == model.attn_out(layer).name))
    weights = [model.hf.get_submodule(model.arch.embed).weight, *(p for l in range(layer + 1)
                                                                  for p in model.layer(l).parameters())]
    return id(model.hf), layer, tuple((p.data_ptr(), p._version) for p in weights), changes


def memory_states(model: Model, layer: int, texts: list[str], ctx: Context, bf16: bool) -> torch.Tensor:
    """`mlp_inputs` of the memory set, cached while the weights and changes below `layer` are the same."""
    key = (_states_key(model, layer, ctx), hash(tuple(texts)), bf16)
    if key not in _MEMORY:
        _MEMORY.clear()
        _MEMORY[key] = mlp_inputs(model, layer, texts, bf16=bf16)
    return _MEMORY[key]


@register
class TPatcher(Method):
    """T-Patcher: patch neurons in one MLP (the last layer's by default), one Change per edit."""

    name, title, family, Params, layers = "t-patcher", "T-Patcher", "memory", TPatcherParams, "one"

    def default_layers(self, model: Model, request: Request) -> list[int]:
        """`layer="auto"`: the last layer, as the paper."""
        return [model.n_layers - 1]

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: TPatcherParams,
              ctx: Context) -> list[Change]:
        t = time.perf_counter()
        (request,), (layer,) = requests, layers
        texts = memory_texts(params.memory, requests)
        ids, mask, ((n, target),) = target_batch(model, [request])
        wrong = [j for j, right in enumerate(_greedy_is_target(model, ids, mask, n, target)) if not right]
        positions = [n - 1 + j for j in wrong[:params.max_neurons]]                    # each predicts a wrong token
        queries = mlp_input(model, layer, ids, mask)[0, positions]                      # [k, d]
        memory = torch.cat([memory_states(model, layer, texts, ctx, uses_bf16(model, params.bf16)),
                            edited_states(model, layer, ctx, request)])
        patch = PatchNeurons(queries.shape[1], len(positions)).to(model.device)
        patch.keys.data.copy_(queries / queries.norm(dim=1, keepdim=True) ** 2)         # a_e,i = 1 at the start
        info = train_patch(model, patch, layer, queries, memory, ids, mask, [(n, target)], params)
        ctx.info.update(info, neurons=len(positions), seconds={"t-patcher": time.perf_counter() - t},
                        memory_states=len(memory), parameters_added=sum(p.numel() for p in patch.parameters()))
        return [HookPatch(model.mlp(layer).name, patch)]


def train_patch(model: Model, patch: PatchNeurons, layer: int, queries, memory, ids, mask, spans,
                params: TPatcherParams) -> dict:
    """Adam on the patch's keys, bias and values (V = amplify · U) with the patch in place; layers
    below `layer` replay their recorded output. `queries` `[k, d]`: neuron i's input at its position.
    Stops when the target is the greedy continuation and every memory state's activation is below
    zero. Returns the losses and the final activations."""
    U = nn.Parameter(torch.zeros_like(patch.values))
    del patch.values  # V = amplify · U while training: a plain tensor whose gradient reaches U
    trained = [patch.keys, patch.bias, U]
    for p in (patch.keys, patch.bias):
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=params.lr, weight_decay=params.weight_decay)
    handle = attach(model, model.mlp(layer), patch)
    losses, (n, target) = [], spans[0]
    try:
        bf16 = uses_bf16(model, params.bf16)
        with weights_require_grad(model, bf16), training_mode(model, bf16):
            with replaying_below(model, layer, ids, mask), torch.enable_grad():
                for _ in range(params.steps):
                    patch.values = U * params.amplify
                    edit = edit_loss(model, ids, mask, spans, "target_new")
                    a_e = patch.activations(queries).diagonal()                              # [k]: own position
                    a_m = patch.activations(memory)                                             # [M, k]
                    act = torch.exp(params.act_margin - a_e).mean()
                    k = min(params.top_k, a_m.numel())
                    mem = (torch.exp(a_m - a_e + params.margin_1).flatten().topk(k).values.mean()
                           + torch.exp(a_m - params.margin_2).flatten().topk(k).values.mean())
                    loss = edit + params.act_weight * act + params.memory_weight * mem
                    grads = torch.autograd.grad(loss, trained)
                    for p, g in zip(trained, grads):
                        p.grad = g
                    opt.step()
                    losses.append(float(loss.detach()))
                    if float(a_m.detach().max()) < 0 and all(_greedy_is_target(model, ids, mask, n, target)):
                        break
    finally:
        handle.remove()
        values = (U.detach() * params.amplify).clone()
        del patch.values
        patch.values = nn.Parameter(values, requires_grad=False)
        for p in (patch.keys, patch.bias):
            p.requires_grad_(False)
    with torch.no_grad():
        return {"loss": losses, "steps": len(losses), "activation": patch.activations(queries).diagonal().tolist(),
                "memory_max_activation": float(patch.activations(memory).max())}


@torch.no_grad()
def _greedy_is_target(model: Model, ids, mask, n: int, target: list[int]) -> list[bool]:
    """Per target token: is it the greedy next token (teacher forced; float32, as evaluation runs)?"""
    with torch.autocast(model.device.type, enabled=False):
        (got,) = greedy_answers(model, ids, mask, [(n, target)])
    return [int(t) == g for t, g in zip(target, got)]
