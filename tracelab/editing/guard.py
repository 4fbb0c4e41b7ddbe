"""The collapse guard: an edit that would break the model is refused, and nothing of it stays.

    >>> e = tl.edit(model, request, method="mend", guard=True)           # Guard() defaults
    >>> e.info["health"]                  # {"perplexity": 51.2, "base_perplexity": 50.66, "weight_change": {...}}
    >>> tl.edit(model, request, method="rome", guard=Guard(max_perplexity_ratio=1.2))
    >>> tl.evaluate(model, records, "ke", mode="sequential", guard=True)  # the stream skips collapsing edits

With the method's changes applied, inside the edit's transaction, the guard measures

    perplexity   of a fixed held-out text (`held_out_texts`, the last 4), against the unedited model's
                 (the journal suspended; measured once per model, texts and length)
    Δ_rel(W)     = ‖W − W₀‖_F / ‖W₀‖_F for every weight the journal and this edit change (W₀: unedited)

and raises `CollapseRefused` — an `EditRefused`, so the transaction reverts every change and a
sequential evaluation scores the case unedited and goes on — when perplexity exceeds
`max_perplexity_ratio` × the base's (default 2, #21) or some Δ_rel exceeds `max_weight_change`
(default 1: an update as large as the weight it changes). Hooks and prompt contexts change no
weight; their effect shows in the perplexity. The base perplexity is cached per model object: an
edit of the weights made outside the journal is not seen by it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable

import torch

from ..models import Model
from ..models.text import perplexity
from .changes import Change, ParamDelta
from .journal import journal
from .registry import EditRefused


class CollapseRefused(EditRefused):
    """The guard refused an edit: the model's health after it passed a bound; nothing was changed."""


@lru_cache(maxsize=2)
def held_out_texts(n: int = 16) -> tuple[str, ...]:
    """The last `n` paragraphs of the WordNet statistics corpus (key statistics read its first ones)."""
    from .toolkit.corpus import corpus

    return tuple(list(corpus("wordnet").texts())[-n:])


_BASE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model.hf → {(texts, max_length): perplexity}


@dataclass(frozen=True)
class Guard:
    """Bounds on the model's health after an edit; see the module doc. `texts`: the held-out text
    (None: the last `paragraphs` of `held_out_texts()`), each truncated to `max_length` tokens. Its
    cost is one forward over the text per edit: on the embedded model (2 CPU cores) the 16 paragraphs of
    the lifelong benchmark (2,476 tokens) took 9.0 s of every guarded edit; 4 (524 tokens) take a
    quarter of that (4.3 s against 18.0 s, measured side by side on a busy machine)."""

    max_perplexity_ratio: float = 2.0
    max_weight_change: float = 1.0
    texts: tuple[str, ...] | None = None
    paragraphs: int = 4
    max_length: int = 256

    def __post_init__(self) -> None:
        if not self.max_perplexity_ratio > 1 or not self.max_weight_change > 0:
            raise ValueError(f"max_perplexity_ratio must be > 1 and max_weight_change > 0, got "
                             f"{self.max_perplexity_ratio!r}, {self.max_weight_change!r}")
        if not isinstance(self.paragraphs, int) or self.paragraphs < 1:
            raise ValueError(f"paragraphs must be a positive int, got {self.paragraphs!r}")
        if self.texts is not None and (isinstance(self.texts, str) or not self.texts):
            raise ValueError("texts must be a non-empty sequence of strings (None: the held-out WordNet paragraphs)")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "texts"} | {"texts": len(self.held_out())}

    def held_out(self) -> tuple[str, ...]:
        return tuple(self.texts) if self.texts is not None else held_out_texts(self.paragraphs)

    def base_perplexity(self, model: Model) -> float:
        """Perplexity of the held-out text on the unedited model (cached per model object)."""
        per_model = _BASE.setdefault(model.hf, {})
        key = (self.held_out(), self.max_length)
        if key not in per_model:
            with journal(model).suspended(), torch.no_grad():
                per_model[key] = perplexity(model, list(self.held_out()), max_length=self.max_length)
        return per_model[key]

    def check(self, model: Model, changes: Iterable[Change]) -> dict:
        """The health of `model` as it is now (with `changes`, the edit's, applied); `CollapseRefused`
        naming what passed its bound. Returns {"perplexity", "base_perplexity", "weight_change"}."""
        base = self.base_perplexity(model)
        with torch.no_grad():
            now = perplexity(model, list(self.held_out()), max_length=self.max_length)
        change = weight_change(model, [*(c for e in journal(model).edits for c in e.changes), *changes])
        health = {"perplexity": now, "base_perplexity": base, "weight_change": change}
        problems = []
        if not math.isfinite(now) or now > self.max_perplexity_ratio * base:
            problems.append(f"held-out perplexity {now:.4g} > {self.max_perplexity_ratio:g} × the unedited "
                            f"model's {base:.4g}")
        over = {name: rel for name, rel in change.items() if not rel <= self.max_weight_change}
        if over:
            worst = max(over, key=over.get)
            problems.append(f"{len(over)} weight(s) changed by more than {self.max_weight_change:g} of their norm "
                            f"(‖ΔW‖/‖W₀‖ = {over[worst]:.3g} at {worst})")
        if problems:
            raise CollapseRefused("the collapse guard refused this edit (nothing was changed): " + "; ".join(problems)
                                  + ". Loosen it with guard=Guard(max_perplexity_ratio=..., max_weight_change=...)")
        return health


def weight_change(model: Model, changes: Iterable[Change]) -> dict[str, float]:
    """‖W − W₀‖_F / ‖W₀‖_F per weight that the applied `changes` (their ParamDeltas) touch, W₀ the
    weight without them."""
    totals: dict[str, torch.Tensor] = {}
    for c in changes:
        if isinstance(c, ParamDelta) and c.applied:
            totals[c.name] = totals.get(c.name, 0) + c.delta.float()
    out = {}
    for name, total in totals.items():
        now = model.parameter(name).detach().float()
        out[name] = float(total.norm() / (now - total.to(now.device)).norm().clamp_min(1e-12))
    return out


def as_guard(guard: bool | Guard | None) -> Guard | None:
    """`edit`'s `guard=`: True → `Guard()`, a `Guard` as given, False/None → no guard."""
    if guard is None or guard is False:
        return None
    if guard is True:
        return Guard()
    if isinstance(guard, Guard):
        return guard
    raise TypeError(f"guard must be True, False or a Guard, got {type(guard).__name__}")
