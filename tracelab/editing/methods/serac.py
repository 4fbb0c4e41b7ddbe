"""SERAC (Mitchell et al., ICML 2022): an edit memory, a scope classifier and a counterfactual
model; the base model's weights are never changed.

    >>> tl.train_editor("serac", model, data="../shared/data/zsre-sample.json", limit=500)   # once
    >>> tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
    ...         method="serac")                               # a memory write, no weight changes
    >>> model.query_text("Which city is the Eiffel Tower in?")
    ['<edit>\\nThe Eiffel Tower is located in the city of Rome\\nWhich city is the Eiffel Tower in?']

Every prompt the model is asked (`Model.query_text`) is compared with each edit in memory:

    z(x) = mean over x's tokens of the base model's residual stream after layer L     (frozen)
    p(e, x) = σ(s · cos(P ẑ(e), P ẑ(x)) + b)        ẑ = (z − μ) / σ_z;  P: [d_scope, d_model]

If the best edit e* has p ≥ ½ the prompt is in scope and goes to the counterfactual model with e*
in its context, "<edit>\\n{e*'s prompt} {e*'s answer}\\n{x}"; otherwise it goes to the base model
untouched. The counterfactual model is the base model plus an adapter at every MLP output
projection that acts only on rows whose tokens begin with the "<edit>\\n" marker:

    y_l = W_l x + g · B_l A_l x            g = 1 on a marked row, else 0;  A_l: [r, d_in], B_l: [d_out, r]

Training (`tracelab.train_editor`): the classifier is fitted first, on the frozen states of the
training records (positives: an edit with its own prompt and paraphrase; negatives: its
locality prompt and every other record's prompts), then the loop trains the adapter on the NLL of
the new answer given the edit in context, for the edit's prompt and its paraphrase.

Differences from the paper, for this setting: the classifier embeds with the base model's own
states (P learned on top) instead of a separate DistilBERT, so nothing else is shipped or
downloaded (the benchmark measures it against TF-IDF cosine); the counterfactual model is the base
model with a low-rank adapter (rank 8) instead of a separately fine-tuned model, so out-of-scope
rows run exactly the base model within the same forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...io import tensor_hash
from ...models import Model
from ..changes import Change, register_change
from ..checkpoints import model_weights_hash, read_checkpoint
from ..registry import Context, Method, register, require_positive
from ..requests import Request
from ..toolkit.answers import answer_batch, greedy_answers, locality_pair, paraphrase, row_nll, token_accuracy

MARKER = "<edit>\n"


@dataclass
class SeracParams:
    lr: float = 1e-3              # the counterfactual adapter (Adam)
    rank: int = 8                 # of the adapter at each layer
    scope_lr: float = 1e-3        # the classifier (Adam, full batch)
    scope_steps: int = 500
    scope_dim: int = 256          # width of P
    embed_layer: int | None = None  # L; None: a third of the way up
    threshold: float = 0.5        # p at which a prompt is in scope
    checkpoint: str | None = None  # a checkpoint path; None: the newest for this model

    def __post_init__(self) -> None:
        require_positive(self, numbers=("lr", "scope_lr"), counts=("rank", "scope_steps", "scope_dim"))
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint"}


class SeracEditor(nn.Module):
    """The scope classifier (P, s, b, μ, σ_z) and the counterfactual adapter (A_l, B_l per layer)."""

    def __init__(self, model: Model, params: SeracParams):
        super().__init__()
        d = model.d_model
        self.embed_layer = params.embed_layer if params.embed_layer is not None else model.n_layers // 3
        if not 0 <= self.embed_layer < model.n_layers:
            raise ValueError(f"embed_layer {self.embed_layer} is out of range: {model.name} has layers "
                             f"0..{model.n_layers - 1}")
        self.threshold = params.threshold
        self.project = nn.Linear(d, params.scope_dim)
        self.scale, self.bias = nn.Parameter(torch.tensor(10.0)), nn.Parameter(torch.tensor(-5.0))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        shapes = [model.mlp_out_weight(l).matrix.shape for l in range(model.n_layers)]  # [d_out, d_in]
        self.down = nn.ParameterList([nn.Parameter(torch.randn(params.rank, i) / i ** 0.5) for _, i in shapes])
        self.up = nn.ParameterList([nn.Parameter(torch.zeros(o, params.rank)) for o, _ in shapes])

    def scope_logits(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """logit p(e, x) for every edit state `keys` [m, d] and prompt state `queries` [n, d] → [m, n]."""
        k, q = (F.normalize(self.project((z.float() - self.mean) / self.std), dim=-1) for z in (keys, queries))
        return self.scale * k @ q.T + self.bias

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [*self.down, *self.up]


@torch.no_grad()
def pooled_states(model: Model, layer: int, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """z(x): the mean over each text's tokens of the residual stream after `layer` `[n, d_model]`."""
    out = []
    for i in range(0, len(texts), batch_size):
        batch = model.tokenize(texts[i:i + batch_size])
        with model.record([model.resid(layer)], stop=True) as cache:
            model.hf(**batch)
        mask = batch["attention_mask"][..., None].float()
        out.append((cache[model.resid(layer).name].float() * mask).sum(1) / mask.sum(1))
    return torch.cat(out) if out else torch.zeros(0, model.d_model, device=model.device)


def counterfactual_text(fact: str, prompt: str) -> str:
    return f"{MARKER}{fact}\n{prompt}"


def _fact(request) -> str:
    return f"{request.text} {request.target.strip()}"


@contextlib.contextmanager
def counterfactual(model: Model, editor: SeracEditor):
    """Inside the block every forward row that begins with the marker runs the counterfactual model
    (W_l + B_l A_l at each MLP output projection); the other rows run the base model exactly."""
    marker = torch.tensor(model.tokenizer(MARKER)["input_ids"], device=model.device)
    gate: dict[str, torch.Tensor] = {}

    def note_rows(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            gate["rows"] = None
        elif mask is not None and ids.shape[1] < mask.shape[1] and gate.get("rows") is not None:
            pass                                  # a cached generation step: the rows are the ones seen first
        else:
            first = mask.long().argmax(1) if mask is not None else torch.zeros(len(ids), dtype=torch.long,
                                                                                 device=ids.device)
            at = (first[:, None] + torch.arange(len(marker), device=ids.device)).clamp(max=ids.shape[1] - 1)
            gate["rows"] = (ids.gather(1, at) == marker).all(1) & (first + len(marker) <= ids.shape[1])

    def adapt(l: int):
        def hook(module, args, output):
            rows = gate.get("rows")
            if rows is None or not rows.any():
                return None
            x = args[0][rows].float()
            extra = (x @ editor.down[l].T) @ editor.up[l].T
            out = output.clone()
            out[rows] = out[rows] + extra.to(output.dtype)
            return out
        return hook

    handles = [model.hf.register_forward_pre_hook(note_rows, with_kwargs=True)]
    handles += [model.module(model.mlp_out_weight(l).name.rpartition(".")[0]).register_forward_hook(adapt(l))
                for l in range(model.n_layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def route(editor: SeracEditor, keys: torch.Tensor, facts: list[str], prompts: list[str],
          states: torch.Tensor) -> list[str]:
    """Each prompt as the model is asked it: after the best edit's fact when in scope, else as it is."""
    if not facts:
        return list(prompts)
    best, which = torch.sigmoid(editor.scope_logits(keys, states)).max(0)
    return [counterfactual_text(facts[int(i)], x) if p >= editor.threshold else x
            for x, p, i in zip(prompts, best.tolist(), which.tolist())]


class EditMemory:
    """The applied SERAC edits of one model: a query rewriter, and the counterfactual model's hooks
    while it holds an edit."""

    def __init__(self, model: Model, editor: SeracEditor, editor_hash: str):
        self.model, self.editor, self.editor_hash = model, editor, editor_hash
        self.entries: list[SeracEdit] = []
        self.states: dict[str, torch.Tensor] = {}
        self._hooks = contextlib.ExitStack()

    def join(self, entry: SeracEdit) -> None:
        if not self.entries:
            self._hooks.enter_context(counterfactual(self.model, self.editor))
            self.model.query_rewriters.append(self)
        self.entries.append(entry)

    def leave(self, entry: SeracEdit) -> None:
        self.entries.remove(entry)
        if not self.entries:
            self.model.query_rewriters.remove(self)
            self._hooks.close()
            self.states.clear()

    def query(self, prompt: str) -> str:
        if prompt.startswith(MARKER):
            return prompt
        layer = self.editor.embed_layer
        # z(prompt) of the model as it is: keyed on where each weight below L is and its version
        stamp = tuple((p.data_ptr(), p._version) for l in range(layer + 1) for p in self.model.layer(l).parameters())
        if self.states.get("stamp") != stamp:
            self.states = {"stamp": stamp}
        if prompt not in self.states:
            self.states[prompt] = pooled_states(self.model, layer, [prompt])[0]
        keys = torch.stack([e.key.to(self.model.device) for e in self.entries])
        return route(self.editor, keys, [e.fact for e in self.entries], [prompt], self.states[prompt][None])[0]


_MEMORIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hf model -> EditMemory


@register_change
@dataclass(eq=False)
class SeracEdit(Change):
    """One SERAC edit: an entry of the model's edit memory (`fact`, and `key` = z(the edit's prompt)
    `[d_model]`), read by the trained editor at `checkpoint` (its path and tensors' hash)."""

    kind: ClassVar[str] = "serac"
    fact: str
    key: torch.Tensor
    checkpoint: dict[str, str]
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    hash_before: str = ""
    hash_after: str = ""
    editor: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return "prompt"

    @property
    def applied(self) -> bool:
        return self._model is not None

    def _editor(self, model: Model) -> SeracEditor:
        if self.editor is None:
            tensors, meta = read_checkpoint(self.checkpoint["path"])
            if meta.get("tensors") != self.checkpoint["tensors"]:
                raise ValueError(f"the SERAC edit was made with the editor whose tensors hash is "
                                 f"{self.checkpoint['tensors']}, but {self.checkpoint['path']} now holds "
                                 f"{meta.get('tensors')}: restore that checkpoint")
            self.editor = SeracEditor(model, SeracParams(**meta["params"])).to(model.device)
            self.editor.load_state_dict(tensors)
            self.editor.eval()
        return self.editor

    def check(self, model: Model) -> None:
        if self.hash_before and model_weights_hash(model) != self.hash_before:
            raise ValueError(f"this SERAC edit was made for a base model with weights {self.hash_before}, not "
                             f"{model.name} ({model_weights_hash(model)}): load the same base model")
        self._editor(model)

    def apply(self, model: Model) -> None:
        if self._model is not None:
            raise ValueError("this SERAC edit is already applied")
        editor = self._editor(model)
        memory = _MEMORIES.get(model.hf)
        if memory is None:
            memory = _MEMORIES[model.hf] = EditMemory(model, editor, self.checkpoint["tensors"])
        elif memory.editor_hash != self.checkpoint["tensors"]:
            raise ValueError(f"{model.name} already holds SERAC edits of another trained editor "
                             f"({memory.editor_hash}); undo them before editing with {self.checkpoint['path']}")
        memory.join(self)
        self._model = model
        self.hash_after = hashlib.sha256(f"{self.fact}:{tensor_hash(self.key)}".encode()).hexdigest()[:16]

    def revert(self, model: Model) -> None:
        if self._model is None:
            raise ValueError("this SERAC edit is not applied, so there is nothing to undo")
        memory = _MEMORIES[model.hf]
        memory.leave(self)
        if not memory.entries:
            del _MEMORIES[model.hf]
        self._model = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"key": self.key}

    def meta(self) -> dict[str, Any]:
        return {"fact": self.fact, "checkpoint": self.checkpoint}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], state: dict) -> SeracEdit:
        return cls(meta["fact"], tensors["key"], meta["checkpoint"], state)


@register
class SERAC(Method):
    """SERAC: each edit is a memory entry (`SeracEdit`); a trained classifier routes prompts in
    scope to the counterfactual model. Edits are memory writes: one forward pass for the key."""

    name, title, family, Params, layers = "serac", "SERAC", "meta-learned", SeracParams, "none"
    batch, trained, val_metrics = True, True, ("reliability", "generality", "locality")

    def default_layers(self, model: Model, request: Request | None) -> list[int]:
        return []

    # ---- training (tracelab.training) ----------------------------------------------------------
    def init_editor(self, model: Model, layers: list[int], params: SeracParams, records) -> SeracEditor:
        editor = SeracEditor(model, params).to(model.device)
        if records:
            fit_scope(model, editor, records, params)
        return editor

    def optimizer_groups(self, editor: SeracEditor, params: SeracParams) -> list[dict]:
        return [{"params": editor.adapter_parameters(), "lr": params.lr}]

    def training_loss(self, model: Model, editor: SeracEditor, layers, records, params: SeracParams):
        if not records:
            return sum(p.sum() * 0 for p in editor.parameters()), {}
        rows = [(counterfactual_text(_fact(r.request), x), r.request.target)
                for r in records for x in (r.request.text, paraphrase(r))]
        ids, mask, spans = answer_batch(model, rows)
        with counterfactual(model, editor), model.native():
            nll = row_nll(model.hf(input_ids=ids, attention_mask=mask).logits, spans)
        return nll.sum() / 2, {"nll": float(nll.detach().mean())}

    def validate(self, model: Model, editor: SeracEditor, layers, records, params: SeracParams) -> list[dict]:
        """Each record edited alone: its prompt, paraphrase and locality prompt routed and answered."""
        out = []
        prompts = [[r.request.text, paraphrase(r), locality_pair(r)[0]] for r in records]
        states = pooled_states(model, editor.embed_layer, [x for p in prompts for x in p]).reshape(len(records), 3, -1)
        for r, asked, z in zip(records, prompts, states):
            routed = route(editor, z[:1], [_fact(r.request)], asked, z)
            answers = [r.request.target, r.request.target, locality_pair(r)[1]]
            batch = answer_batch(model, list(zip(routed, answers)))
            with counterfactual(model, editor), model.native():
                got = greedy_answers(model, *batch)
                base = greedy_answers(model, *answer_batch(model, [(asked[2], answers[2])]))[0]
            want = [t for _, t in batch[2]]
            out.append({"reliability": token_accuracy(got[0], want[0]), "generality": token_accuracy(got[1], want[1]),
                        "locality": token_accuracy(got[2], base)})
        return out

    # ---- editing (tl.edit) -----------------------------------------------------------------------
    def apply(self, model: Model, requests: list[Request], layers: list[int], params: SeracParams,
              ctx: Context) -> list[Change]:
        editor = ctx.editor
        keys = pooled_states(model, editor.embed_layer, [r.text for r in requests])
        ctx.info.update(parameters_changed=0)
        return [SeracEdit(_fact(r), keys[i].cpu(), dict(editor.checkpoint), editor=editor,
                          hash_before=editor.checkpoint["weights"]) for i, r in enumerate(requests)]


def fit_scope(model: Model, editor: SeracEditor, records, params: SeracParams) -> dict[str, float]:
    """Fit P, s, b on the frozen states of the records' prompts (full batch); μ and σ_z from them.
    Returns the training accuracy on positives and negatives."""
    texts = [x for r in records for x in (r.request.text, paraphrase(r), locality_pair(r)[0])]
    z = pooled_states(model, editor.embed_layer, texts).reshape(len(records), 3, -1)
    editor.mean.copy_(z.reshape(-1, z.shape[-1]).mean(0))
    editor.std.copy_(z.reshape(-1, z.shape[-1]).std(0))
    keys, queries = z[:, 0], z.reshape(-1, z.shape[-1])
    n = len(records)
    label = torch.zeros(n, 3 * n, device=z.device)
    label[torch.arange(n), 3 * torch.arange(n)] = label[torch.arange(n), 3 * torch.arange(n) + 1] = 1
    same = torch.tensor([[a == b for b in texts] for a in texts[::3]], device=z.device)
    label = torch.maximum(label, same.float())                          # a prompt repeated in another record
    scope = [*editor.project.parameters(), editor.scale, editor.bias]
    opt = torch.optim.Adam(scope, lr=params.scope_lr)
    with torch.enable_grad():
        for _ in range(params.scope_steps):
            bce = F.binary_cross_entropy_with_logits(editor.scope_logits(keys, queries), label, reduction="none")
            loss = (bce * label).sum() / label.sum() + (bce * (1 - label)).sum() / (1 - label).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        said = torch.sigmoid(editor.scope_logits(keys, queries)) >= editor.threshold
    return {"positives": float(said[label.bool()].float().mean()),
            "negatives": float((~said)[~label.bool()].float().mean())}
