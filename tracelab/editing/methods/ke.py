"""KnowledgeEditor (De Cao et al., EMNLP 2021): a hyper-network, conditioned on the edit, that
predicts a constrained update from the fine-tuning gradient.

    >>> tl.train_editor("ke", model, data="../shared/data/zsre-sample.json", limit=500)   # once
    >>> tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
    ...         method="ke")                            # ParamDeltas at the last three MLP output projections

The edit "{prompt} {new answer}" is read by a bidirectional LSTM over the base model's token
embeddings; its last states give the condition c. For each edited weight W ([m, n]) a small
network of c gives row and column vectors and a gate, and the update is the paper's

    a = softmax(ρ_a)ᵀ κ_a,  b = softmax(ρ_b)ᵀ κ_b          ρ: [m], κ: [n]   (rank-one [m, n])
    ΔW = s · σ(η) · (∇W L ⊙ a + b),   W ← W − ΔW            s: max_scale;  ∇W L = Σ_t δ_t u_tᵀ

Because a is rank one, ∇W L ⊙ a = diag(softmax ρ_a) ∇W L diag(κ_a), so ΔW is kept factored:
Σ_t (ρ̂_a ⊙ δ_t)(κ_a ⊙ u_t)ᵀ + ρ̂_b κ_bᵀ (rank ≤ tokens + 1). Training is MEND's (the EasyEdit
trainer both share): c_edit · NLL of the new answer after a paraphrase + c_loc · KL on a locality
prompt. s = 30 (the paper: 1): at the start (κ_a ≈ 1, σ(η) ≈ ½) the update is then the gradient
step that lowers the edit NLL most of s ∈ {1, 30, 300, 3000} on ten zsRE training edits of the
embedded model (8.0 nats → 7.9 / 5.3 / 7.2 / 20.0). Other differences from the paper, for this
setting: the LSTM reads the base model's frozen embeddings instead of a trained copy (28 M
parameters fewer), the condition is the prompt and new answer (not the old prediction as well),
and the locality term is the KL penalty instead of the paper's constraint with a Lagrange
multiplier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ...models import Model
from ..registry import register, require_positive
from ..toolkit.answers import target_batch
from .mend import MEND, gradient_factors


@dataclass
class KEParams:
    lr: float = 3e-4             # the hyper-network (Adam)
    max_scale: float = 30.0      # s (see the module doc)
    lstm_dim: int = 256          # per direction
    condition_dim: int = 1024    # c
    hidden_dim: int = 128        # of each weight's conditioner
    c_edit: float = 0.1
    c_loc: float = 1.0
    checkpoint: str | None = None  # a checkpoint path; None: the newest for this model and layers

    def __post_init__(self) -> None:
        require_positive(self, numbers=("lr", "max_scale"), counts=("lstm_dim", "condition_dim", "hidden_dim"))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint"}


class ConditionedWeight(nn.Module):
    """c `[R, condition_dim]` → (ρ̂_a [R, m], κ_a [R, n], ρ̂_b [R, m], κ_b [R, n], σ(η) [R]) for one W."""

    def __init__(self, m: int, n: int, params: KEParams):
        super().__init__()
        self.m, self.n = m, n
        out = nn.Linear(params.hidden_dim, 2 * (m + n) + 1)
        with torch.no_grad():
            out.bias[m:m + n] = 1.0          # κ_a ≈ 1 at the start: ΔW starts as a (scaled) gradient step
        self.net = nn.Sequential(weight_norm(nn.Linear(params.condition_dim, params.hidden_dim)), nn.Tanh(),
                                 weight_norm(out))

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rho_a, kappa_a, rho_b, kappa_b, eta = self.net(c).split([self.m, self.n, self.m, self.n, 1], -1)
        return rho_a.softmax(-1), kappa_a, rho_b.softmax(-1), kappa_b, torch.sigmoid(eta[..., 0])


class KnowledgeEditor(nn.Module):
    """The condition encoder (LSTM over the base model's embeddings) and one conditioner per layer."""

    def __init__(self, model: Model, layers: list[int], params: KEParams):
        super().__init__()
        self.layers, self.max_scale = list(layers), params.max_scale
        self.lstm = nn.LSTM(model.d_model, params.lstm_dim, batch_first=True, bidirectional=True)
        self.condition = nn.Sequential(nn.Linear(2 * params.lstm_dim, params.condition_dim), nn.Tanh())
        shapes = [model.mlp_out_weight(l).matrix.shape for l in layers]                    # [d_out, d_in]
        self.weights = nn.ModuleList([ConditionedWeight(int(m), int(n), params) for m, n in shapes])

    def encode(self, model: Model, requests) -> torch.Tensor:
        """c for each request's "{prompt} {new answer}" `[R, condition_dim]`."""
        ids, mask, _ = target_batch(model, requests)
        embeddings = model.hf.get_input_embeddings()(ids).detach().float()
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(embeddings, lengths, batch_first=True, enforce_sorted=False)
        _, (last, _) = self.lstm(packed)                                                  # [2, R, lstm_dim]
        return self.condition(torch.cat([last[0], last[1]], -1))

    def factors(self, c: torch.Tensor, raw: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, tuple]:
        """Per layer `(U [R, P+1, d_in], D [R, P+1, d_out], 1)` with ΔW_r = D_rᵀ U_r (see the module doc)."""
        out = {}
        for j, l in enumerate(self.layers):
            u, delta = raw[l]                                                              # [R, P, d]
            rho_a, kappa_a, rho_b, kappa_b, gate = self.weights[j](c)
            scale = (self.max_scale * gate)[:, None, None]
            U = torch.cat([kappa_a[:, None] * u, kappa_b[:, None]], 1)
            D = torch.cat([rho_a[:, None] * delta, rho_b[:, None]], 1) * scale
            out[l] = (U, D, torch.ones((), device=u.device))
        return out


@register
class KE(MEND):
    """KnowledgeEditor: a trained hyper-network turns one edit and its gradient into `ParamDelta`s;
    trained, validated and applied as MEND (`edit_factors` is what differs)."""

    name, title, family, Params, layers = "ke", "KnowledgeEditor", "meta-learned", KEParams, "range"

    def init_editor(self, model: Model, layers: list[int], params: KEParams, records) -> KnowledgeEditor:
        return KnowledgeEditor(model, layers, params).to(model.device)

    def optimizer_groups(self, editor: KnowledgeEditor, params: KEParams) -> list[dict]:
        return [{"params": list(editor.parameters()), "lr": params.lr}]

    def edit_factors(self, model: Model, editor: KnowledgeEditor, layers: list[int], requests) -> dict[int, tuple]:
        raw = gradient_factors(model, layers, *target_batch(model, requests))
        return editor.factors(editor.encode(model, requests), raw)
