"""The method registry: every editing method behind one protocol, looked up by name.

    >>> import tracelab as tl
    >>> tl.editing.registry.names()                  # ['alphaedit', 'memit', 'rome', ...]
    >>> get("memit").family, get("memit").batch      # ('locate-then-edit', True)

A method is a `Method` subclass, registered with `@register`:

    >>> @register
    ... class Nudge(Method):
    ...     name, family, Params, layers = "nudge", "fine-tune", NudgeParams, "one"
    ...     def apply(self, model, requests, layers, params, ctx):
    ...         return [ParamDelta.mlp_out(model, layers[0], params.scale * direction(model, requests))]
    >>> tl.edit(model, subject="Lyon", prompt="{} is in", target="Italy", method="nudge", layer=3)

`tl.edit` validates everything a method declares before any work (requests, batch size, layers,
`Params` type), computes what it `needs`, and applies the returned Changes in a transaction (see
`api`). `apply` never writes a weight itself: it returns Changes, or, where a later step needs an
earlier change in place (MEMIT's layer loop), asks `ctx.tx.apply(change)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from ..models import Model
from .changes import Change
from .requests import Request

FAMILIES = ("locate-then-edit", "fine-tune", "neuron", "memory", "meta-learned", "in-context")
LAYER_RULES = ("one", "range", "none")  # one layer; an increasing range; no layers at all


class EditRefused(ValueError):
    """A method cannot make this edit (KN: no neuron passes the threshold); nothing was changed.
    The evaluation runner scores such a case as not edited instead of stopping."""


@dataclass
class Context:
    """What `tl.edit` hands a method besides its inputs.

    `tx`: the edit's `Transaction` (`tx.apply(change)` now, `tx.trial(change)` for a check);
    `journal`: the model's journal (earlier edits, their `state`; `journal.suspended()` gives the
    unedited model); `stats`: `{layer: KeyStats}` when the method `needs` "stats"; `progress`:
    show progress bars; `info`: what the method reports (timings, losses), stored on the `Edit`;
    `editor`: a `trained` method's network, loaded from its checkpoint.
    """

    tx: Any
    journal: Any
    stats: dict[int, Any] = field(default_factory=dict)
    progress: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    editor: Any = None


def require_positive(params: Any, *, numbers: Sequence[str] = (), counts: Sequence[str] = ()) -> None:
    """ValueError unless each field named in `numbers` is > 0 and each in `counts` a positive int
    (what a `Params.__post_init__` checks).

        >>> require_positive(MendParams(), numbers=("lr", "edit_lr"), counts=("rank",))
    """
    for name in numbers:
        if not getattr(params, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(params, name)!r}")
    for name in counts:
        if not isinstance(getattr(params, name), int) or getattr(params, name) < 1:
            raise ValueError(f"{name} must be a positive int, got {getattr(params, name)!r}")


class Method:
    """One editing method. Class attributes declare it; `apply` does it.

    - `name`: what users pass as `method=`; `title`: how tables and figures write it (default
      the name); `family`: one of `FAMILIES`.
    - `Params`: a dataclass of the paper's defaults (with `to_dict()`); `params=` must be one.
    - `batch`: several requests in one call; `sequential`: edits may stack in one journal.
    - `needs`: what `tl.edit` prepares: "stats" (key statistics at the layers, `ctx.stats`).
    - `layers`: "one" (a single layer), "range" (increasing layers) or "none"; `auto_layers`:
      what `layer="auto"` picks, "peak" (the traced MLP peak) or "window" (the traced window);
      by default the peak for "one", the window for "range".
    - `trained`: the method learns to edit (`tracelab.train_editor`); it then also gives
      `init_editor`, `optimizer_groups`, `training_loss`, `validate` and its `val_metrics` (see
      `tracelab.training`), and `tl.edit` hands it the checkpoint's network as `ctx.editor`.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    family: ClassVar[str]
    Params: ClassVar[type]
    batch: ClassVar[bool] = False
    sequential: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()
    layers: ClassVar[str] = "one"
    auto_layers: ClassVar[str] = ""
    trained: ClassVar[bool] = False
    val_metrics: ClassVar[tuple[str, ...]] = ()
    already_said: ClassVar[str] = "skip"  # a request the model already answers: "skip" (warn) or "refuse"

    def default_layers(self, model: Model, request: Request) -> list[int]:
        """`layer="auto"`: trace the request and take the MLP peak at the subject's last token
        ("peak"), or the traced window of up to five layers ("window"); see `auto_layers`."""
        from ..tracing import trace  # editing may ask tracing for a layer, never the reverse

        result = trace(model, request.text, subject=request.subject, kinds=["mlp"], progress=False)
        if (self.auto_layers or ("peak" if self.layers == "one" else "window")) == "peak":
            return [int(result.peak("mlp"))]
        return [int(l) for l in result.window("mlp", size=min(5, model.n_layers))]

    def apply(self, model: Model, requests: Sequence[Request], layers: list[int], params: Any,
              ctx: Context) -> list[Change]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name!r} ({self.family})>"


_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Register a `Method` subclass under its `name` (a class decorator); a later registration of
    the same name replaces the earlier one (re-running a notebook cell)."""
    for attr in ("name", "family", "Params"):
        if not hasattr(cls, attr):
            raise TypeError(f"method class {cls.__name__} must set {attr!r}")
    if cls.family not in FAMILIES:
        raise ValueError(f"method {cls.name!r}: family {cls.family!r} is not one of {FAMILIES}")
    if cls.layers not in LAYER_RULES:
        raise ValueError(f"method {cls.name!r}: layers {cls.layers!r} is not one of {LAYER_RULES}")
    cls.title = cls.title or cls.name
    _METHODS[cls.name] = cls()
    return cls


def get(name: str) -> Method:
    """The registered method `name`; ValueError listing the registered ones."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown method {name!r}: registered methods are {names()}")
    return _METHODS[name]


def names(*, family: str | None = None) -> list[str]:
    """Registered method names (of one family), sorted."""
    return sorted(n for n, m in _METHODS.items() if family is None or m.family == family)
