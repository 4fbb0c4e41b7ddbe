"""Changes: the one record of what an intervention did to a model.

    >>> d = ParamDelta.build(model, "model.layers.4.mlp.down_proj.weight", torch.zeros(576, 1536))
    >>> d.apply(model); d.revert(model)                  # the weight back, bit for bit
    >>> HookPatch("blocks.5.mlp_out", AddVector(torch.zeros(576))).apply(model)   # a module at a site
    >>> PromptContext("Fact: The Eiffel Tower is in Rome.\\n").apply(model)        # how prompts are asked

Three kinds, one contract (`Change`): `apply(model)`, `revert(model)` (bit for bit), `check(model)`
(does it fit this model: name, shape, the hash of what it touches), `hash_before` / `hash_after`
(what it touches, before and after), `tensors()` + `meta()` (saved as safetensors + JSON, with
the hash of its own tensors, verified by `load_change`), and `state` (method state that later
edits read, e.g. AlphaEdit's keys; saved with it). A method returns Changes; only the edit
transaction (`journal.Transaction`) applies them.

- `ParamDelta`: W ← W + ΔW for any named parameter, dense or factored (ΔW = A Bᵀ kept as A, B).
- `HookPatch`: a `PatchModule` (its own parameters) installed at a site; the weights are untouched.
- `PromptContext`: text placed before every prompt the model is asked (`Model.query_text`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..io import tensor_hash, tensors_hash
from ..models import Model
from .patches import PATCH_MODULES, PatchModule, attach

FORMAT = 2  # of saved changes and journals; 1 was the dense MLP-output WeightDelta


class Change:
    """What every kind of change provides; see the module doc."""

    kind: ClassVar[str]
    # reverting it leaves later changes to the same target as they are (a hook or a prompt context
    # leaves a list; a weight goes back to its value before, which would drop later deltas)
    reverts_alone: ClassVar[bool] = True
    state: dict[str, torch.Tensor]
    hash_before: str
    hash_after: str

    @property
    def target(self) -> str:
        """What it touches: a parameter name, a site name, or "prompt"."""
        raise NotImplementedError

    @property
    def applied(self) -> bool:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """How many numbers this change stores (parameters changed or added; 0 for a prompt)."""
        return sum(t.numel() for t in self.tensors().values())

    def apply(self, model: Model) -> None:
        raise NotImplementedError

    def revert(self, model: Model) -> None:
        raise NotImplementedError

    def check(self, model: Model) -> None:
        """ValueError unless this change fits `model` as it is now (before it is applied)."""

    def suspend(self, model: Model) -> Any:
        """Take the change out for a while (`Journal.suspended`); `resume` puts it back exactly."""
        self.revert(model)

    def resume(self, model: Model, token: Any) -> None:
        self.apply(model)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {}

    def record(self) -> dict[str, Any]:
        """Everything saved as JSON, with the hash of the saved tensors."""
        own = {**self.tensors(), **{f"state.{k}": v for k, v in self.state.items()}}
        return {"kind": self.kind, "target": self.target, "hash_before": self.hash_before,
                "hash_after": self.hash_after, "tensors": tensors_hash(own), **self.meta()}


def _finite(name: str, t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise ValueError(f"the change to {name} has NaN/inf entries; no weight was changed "
                         "(lower the learning rate or check the statistics)")
    return t.detach().float().cpu()


@dataclass(eq=False)
class ParamDelta(Change):
    """W ← W + ΔW for the parameter `name` of `model.hf` (beneath any wrapper), ΔW in the
    parameter's own layout and float32; `factors=(A, B)` keeps a low-rank ΔW = A Bᵀ as its factors
    (A `[rows, r]`, B `[cols, r]`).

        >>> d = ParamDelta.build(model, "model.layers.4.mlp.down_proj.weight", delta)
        >>> d = ParamDelta.mlp_out(model, 4, update)        # ROME's [d_model, d_mlp] orientation
        >>> d.apply(model); d.norm; d.revert(model)

    `original` holds the weight as stored once applied, so `revert` restores it bit for bit.
    """

    kind: ClassVar[str] = "param"
    reverts_alone: ClassVar[bool] = False
    name: str
    dense: torch.Tensor | None = field(default=None, repr=False)
    factors: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    layer: int | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    original: torch.Tensor | None = field(default=None, repr=False)
    hash_before: str = ""
    hash_after: str = ""

    @classmethod
    def build(cls, model: Model, name: str, delta: torch.Tensor | None = None, *,
              factors: tuple[torch.Tensor, torch.Tensor] | None = None, layer: int | None = None,
              state: dict[str, torch.Tensor] | None = None) -> ParamDelta:
        """A checked delta: the parameter exists, the shape matches, the values are finite."""
        if (delta is None) == (factors is None):
            raise ValueError("give either a dense delta or factors=(A, B), not both")
        param = model.parameter(name)
        if factors is not None:
            A, B = (_finite(name, f) for f in factors)
            if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[1] or (A.shape[0], B.shape[0]) != param.shape:
                raise ValueError(f"factors of {name} have shapes {tuple(A.shape)}, {tuple(B.shape)}; expected "
                                 f"[{param.shape[0]}, r] and [{param.shape[1]}, r] (ΔW = A Bᵀ)")
            return cls(name, None, (A, B), layer, dict(state or {}))
        if tuple(delta.shape) != tuple(param.shape):
            raise ValueError(f"the delta for {name} has shape {tuple(delta.shape)}, expected {tuple(param.shape)}")
        return cls(name, _finite(name, delta), None, layer, dict(state or {}))

    @classmethod
    def mlp_out(cls, model: Model, layer: int, update: torch.Tensor, **kwargs) -> ParamDelta:
        """ΔW of `model.mlp_out_weight(layer)` given as `[d_model, d_mlp]` (its `matrix` orientation)."""
        w = model.mlp_out_weight(layer)
        if tuple(update.shape) != tuple(w.matrix.shape):
            raise ValueError(f"the update for layer {layer} has shape {tuple(update.shape)}, expected "
                             f"{tuple(w.matrix.shape)} ([d_model, d_mlp])")
        return cls.build(model, w.name, update if w.layout == "out_in" else update.T,
                         layer=layer % model.n_layers, **kwargs)

    @property
    def target(self) -> str:
        return self.name

    @property
    def applied(self) -> bool:
        return self.original is not None

    @property
    def delta(self) -> torch.Tensor:
        """ΔW `[rows, cols]` float32 (A Bᵀ for a factored delta)."""
        return self.dense if self.factors is None else self.factors[0] @ self.factors[1].T

    @property
    def norm(self) -> float:
        return float(self.delta.norm())

    def check(self, model: Model) -> None:
        try:
            param = model.parameter(self.name)
        except ValueError as e:
            raise ValueError(f"this change is for {self.name}, which {model.name} does not have") from e
        shape = tuple(self.dense.shape) if self.factors is None else (len(self.factors[0]), len(self.factors[1]))
        if shape != tuple(param.shape):
            raise ValueError(f"the change to {self.name} has shape {shape}, but {model.name}'s is {tuple(param.shape)}")
        have = tensor_hash(param.data)
        if self.hash_before and have != self.hash_before:
            raise ValueError(f"{self.name} of {model.name} has hash {have}, but the change was made on weights with "
                             f"hash {self.hash_before}: load the same base model (and replay the journal from its "
                             "first edit)")

    def apply(self, model: Model) -> None:
        """W ← (W + ΔW) in the parameter's dtype, keeping the original."""
        param = model.parameter(self.name)
        self.original = param.data.detach().clone()
        self.hash_before = tensor_hash(self.original)
        with torch.no_grad():
            param.data.copy_((param.data.float() + self.delta.to(param.device)).to(param.dtype))
        self.hash_after = tensor_hash(param.data)

    def revert(self, model: Model) -> None:
        if self.original is None:
            raise ValueError(f"the change to {self.name} was never applied, so there is nothing to undo")
        with torch.no_grad():
            model.parameter(self.name).data.copy_(self.original)
        self.original = None

    def suspend(self, model: Model) -> torch.Tensor:
        param = model.parameter(self.name)
        current = param.data.clone()
        with torch.no_grad():
            param.data.copy_(self.original)
        return current

    def resume(self, model: Model, token: torch.Tensor) -> None:
        with torch.no_grad():
            model.parameter(self.name).data.copy_(token)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.dense} if self.factors is None else {"A": self.factors[0], "B": self.factors[1]}

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "norm": self.norm}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], state: dict) -> ParamDelta:
        factors = (tensors["A"], tensors["B"]) if "A" in tensors else None
        return cls(meta["name"], tensors.get("delta"), factors, meta.get("layer"), state)


def _params_hash(module: nn.Module) -> str:
    return tensors_hash(dict(module.state_dict()))


@dataclass(eq=False)
class HookPatch(Change):
    """`module` runs on the tensor at `site` (a site name) in every forward pass while applied.

        >>> p = HookPatch("blocks.5.mlp_out", AddVector(model.d_model))
        >>> p.apply(model); p.revert(model)          # no weight of the model is touched

    `hash_before`: the parameters of the site's module when applied (a replay must find the same);
    `hash_after`: the patch's own parameters.
    """

    kind: ClassVar[str] = "hook"
    site: str
    module: PatchModule
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    hash_before: str = ""
    hash_after: str = ""
    _handle: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return self.site

    @property
    def applied(self) -> bool:
        return self._handle is not None

    def _site_hash(self, model: Model) -> str:
        site = model.site(self.site)
        return _params_hash(model.module(site.module))

    def check(self, model: Model) -> None:
        try:
            have = self._site_hash(model)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"this patch is for site {self.site!r}, which {model.name} does not have ({e})") from e
        if self.hash_before and have != self.hash_before:
            raise ValueError(f"the module at {self.site} of {model.name} has hash {have}, but the patch was made "
                             f"on one with hash {self.hash_before}: load the same base model")

    def apply(self, model: Model) -> None:
        if self._handle is not None:
            raise ValueError(f"the patch at {self.site} is already applied")
        self.hash_before = self._site_hash(model)
        self.module.to(model.device)
        self._handle = attach(model, model.site(self.site), self.module)
        self.hash_after = _params_hash(self.module)

    def revert(self, model: Model) -> None:
        if self._handle is None:
            raise ValueError(f"the patch at {self.site} was never applied, so there is nothing to undo")
        self._handle.remove()
        self._handle = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"module.{k}": v for k, v in self.module.state_dict().items()}

    def meta(self) -> dict[str, Any]:
        return {"site": self.site, "module": type(self.module).__name__, "config": self.module.config()}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], state: dict) -> HookPatch:
        if meta["module"] not in PATCH_MODULES:
            raise ValueError(f"the saved patch uses module {meta['module']!r}, which is not registered here "
                             f"(known: {sorted(PATCH_MODULES)}): import the code that registers it first")
        module = PATCH_MODULES[meta["module"]](**meta["config"])
        module.load_state_dict({k.removeprefix("module."): v for k, v in tensors.items()})
        return cls(meta["site"], module, state)


@dataclass(eq=False)
class PromptContext(Change):
    """`prefix` goes before every prompt the model is asked through `Model.query_text` (the
    evaluation metrics, `predict`, `next_token_logits`, `target_log_prob`): an in-context edit.

        >>> c = PromptContext("New fact: The Eiffel Tower is in Rome.\\n")
        >>> c.apply(model); model.predict("The Eiffel Tower is in")   # asked after the prefix
    """

    kind: ClassVar[str] = "prompt"
    prefix: str
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    hash_before: str = ""
    hash_after: str = ""
    _model: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return "prompt"

    @property
    def applied(self) -> bool:
        return self._model is not None

    def query(self, prompt: str) -> str:
        return self.prefix + prompt

    def apply(self, model: Model) -> None:
        if self._model is not None:
            raise ValueError("this prompt context is already applied")
        model.query_rewriters.append(self)
        self._model = model
        self.hash_before = ""  # it reads no weight: any model can be asked through it
        self.hash_after = hashlib.sha256(self.prefix.encode()).hexdigest()[:16]

    def revert(self, model: Model) -> None:
        if self._model is None:
            raise ValueError("this prompt context is not applied, so there is nothing to undo")
        model.query_rewriters.remove(self)
        self._model = None

    def meta(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], state: dict) -> PromptContext:
        return cls(meta["prefix"], state)


KINDS: dict[str, type[Change]] = {c.kind: c for c in (ParamDelta, HookPatch, PromptContext)}


def register_change(cls: type[Change]) -> type[Change]:
    """Make a `Change` class of a new kind loadable by `load_change` (a decorator; SERAC's edit
    memory entries are one)."""
    KINDS[cls.kind] = cls
    return cls


def load_change(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Change:
    """Rebuild a saved change from its JSON record and its tensors, refusing tensors that are not
    the ones saved (their hash is in the record)."""
    if record.get("kind") not in KINDS:
        raise ValueError(f"unknown change kind {record.get('kind')!r}: expected one of {sorted(KINDS)}")
    if tensors_hash(tensors) != record["tensors"]:
        raise ValueError(f"the saved tensors of the change to {record.get('target')} were modified after saving "
                         f"(hash {tensors_hash(tensors)}, saved {record['tensors']}); nothing was applied")
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    own = {k: v for k, v in tensors.items() if not k.startswith("state.")}
    change = KINDS[record["kind"]].from_saved(record, own, state)
    # what it touched and produced when it was made: `Journal.apply` checks both on a replay
    change.hash_before, change.hash_after = record["hash_before"], record["hash_after"]
    return change
