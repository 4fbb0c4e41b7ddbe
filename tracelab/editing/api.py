"""`edit(...)`: write facts into a model with ROME, MEMIT or AlphaEdit; recorded in its journal.

    >>> e = edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of",
    ...          target="Rome", method="rome", layer="auto")
    >>> model.predict("The Eiffel Tower is located in the city of", k=1)   # [(' Rome', 0.9…)]
    >>> e.undo()
    >>> edit(model, requests, method="memit", layers=[3, 4, 5, 6, 7])   # many at once
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..models import Model
from ..models.loading import as_model
from .alphaedit import AlphaEditParams, alphaedit_deltas
from .delta import WeightDelta
from .journal import Edit, journal, transaction
from .memit import MemitParams, memit_deltas
from .requests import Request, as_requests, check_conflicts
from .rome import RomeParams, rome_delta
from .stats import DEFAULT_TOKENS, KeyStats, key_stats
from .values import says_target as already_says

METHODS = ("rome", "memit", "alphaedit")
_PARAMS = {"rome": RomeParams, "memit": MemitParams, "alphaedit": AlphaEditParams}


def _auto_layers(model: Model, request: Request, method: str) -> list[int]:
    """The traced MLP peak at the subject's last token (ROME), or the traced window (MEMIT)."""
    try:
        from ..tracing import trace
    except ImportError as e:
        raise ValueError(f"layer='auto' traces the fact first, but tracing is unavailable ({e}); "
                         "give the layer explicitly, e.g. layer=5") from e
    result = trace(model, request.text, subject=request.subject, kinds=["mlp"], progress=False)
    if method == "rome":
        return [int(result.peak("mlp"))]
    return [int(l) for l in result.window("mlp", size=min(5, model.n_layers))]


def _layers(model: Model, method: str, layer, layers, request: Request) -> list[int]:
    if layers is not None and layer not in (None, "auto"):
        raise ValueError("give either layer= or layers=, not both")
    chosen = layers if layers is not None else layer
    if chosen is None or chosen == "auto":
        return _auto_layers(model, request, method)
    if isinstance(chosen, (int, range, list, tuple)) and not isinstance(chosen, bool):
        out = [model._check_layer(l) for l in ([chosen] if isinstance(chosen, int) else chosen)]
    else:
        raise TypeError(f"layer must be an int, a list of ints or 'auto', got {chosen!r}")
    if not out:
        raise ValueError("empty layer list: give at least one layer")
    if method == "rome" and len(out) != 1:
        raise ValueError(f"ROME edits one layer, got {out}; use method='memit' for a layer range")
    if sorted(set(out)) != out:
        raise ValueError(f"layers must be increasing and distinct, got {out}")
    return out


def _stats(model: Model, layers: list[int], stats, corpus, stats_tokens: int, progress: bool) -> dict[int, KeyStats]:
    if stats is None:
        return key_stats(model, layers, corpus=corpus, tokens=stats_tokens, progress=progress)
    if isinstance(stats, KeyStats):
        stats = {stats.layer: stats}
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a KeyStats or {{layer: KeyStats}}, got {type(stats).__name__}")
    missing = [l for l in layers if l not in stats]
    if missing:
        raise ValueError(f"stats given for layers {sorted(stats)} but the edit needs {missing}")
    for l in layers:
        stats[l].check(model)
    return dict(stats)


def edit(
    model: Model, requests: Request | Mapping | Iterable[Request | Mapping] | None = None, *,
    subject: str | None = None, prompt: str | None = None, target: str | None = None,
    method: str = "rome", layer: int | Sequence[int] | str = "auto", layers: Sequence[int] | None = None,
    params: Any = None, stats: KeyStats | Mapping[int, KeyStats] | None = None, corpus: str = "wordnet",
    stats_tokens: int = DEFAULT_TOKENS, progress: bool = True,
) -> Edit:
    """Edit `model` so each request's prompt continues with its target; returns the applied `Edit`.

        >>> e = edit(model, subject="Lyon", prompt="{} is a city in", target="Italy", layer=5)
        >>> e = edit(model, [{"subject": "Lyon", "prompt": "{} is in", "target": "Italy"}, ...],
        ...          method="memit", layers=range(3, 8))
        >>> e.info["seconds"], e.info["norms"]

    `method`: "rome" (one request, one layer), "memit" or "alphaedit" (many requests, a layer
    range; AlphaEdit protects the keys of earlier AlphaEdit edits in the journal). `layer="auto"`
    traces the (first) request and takes the MLP peak at the subject's last token (ROME) or the
    traced window (MEMIT/AlphaEdit). `params`: `RomeParams` / `MemitParams` / `AlphaEditParams`.
    `stats`: precomputed `KeyStats` (checked against the model), else `key_stats(model, …,
    corpus=corpus, tokens=stats_tokens)` (cached). Requests whose target the model already gives
    are skipped with a warning. Bad input → ValueError/TypeError, and no weight changes.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    if requests is not None and (subject, prompt, target) != (None, None, None):
        raise ValueError("give either requests or subject=/prompt=/target=, not both")
    if requests is None:
        missing = [n for n, v in (("subject", subject), ("prompt", prompt), ("target", target)) if v is None]
        if missing:
            raise ValueError(f"edit() needs subject=, prompt= and target= (missing {missing}), or requests")
        requests = [Request(subject, prompt, target)]
    reqs = check_conflicts(as_requests(requests))
    if method == "rome" and len(reqs) != 1:
        raise ValueError(f"ROME edits one fact at a time, got {len(reqs)} requests; use method='memit' "
                         "(or 'alphaedit') for several")
    for r in reqs:
        model.subject_span(r.text, r.subject)  # ValueError (with the tokens) if the subject is missing
    hp = params if params is not None else _PARAMS[method]()
    if not isinstance(hp, _PARAMS[method]):
        raise TypeError(f"params for {method} must be {_PARAMS[method].__name__}, got {type(hp).__name__}")
    chosen = _layers(model, method, layer, layers, reqs[0])
    todo = [r for r in reqs if not already_says(model, r)]
    if len(todo) < len(reqs):
        skipped = [f"{r.text!r} → {r.target!r}" for r in reqs if r not in todo][:5]
        warnings.warn(f"the model already answers {len(reqs) - len(todo)} request(s) with the target; "
                      f"skipping them (no-op): {skipped}", stacklevel=2)
    e = Edit(method, todo, chosen, {"params": hp.to_dict(), "corpus": corpus, "stats_tokens": stats_tokens})
    if not todo:
        return e
    stats_by_layer = _stats(model, chosen, stats, corpus, stats_tokens, progress)
    e.hparams["stats"] = {str(l): s.provenance for l, s in stats_by_layer.items()}
    start = time.perf_counter()
    with transaction(model) as applied:
        if method == "rome":
            update, info = rome_delta(model, todo[0], chosen[0], stats_by_layer[chosen[0]], hp, progress)
            d = WeightDelta.build(model, chosen[0], update)
            d.apply(model)
            applied.append(d)
        elif method == "memit":
            _, e.keys, info = memit_deltas(model, todo, chosen, stats_by_layer, hp, applied, progress)
        else:
            past = journal(model).past_keys("alphaedit")
            _, e.keys, info = alphaedit_deltas(model, todo, chosen, stats_by_layer, past, hp, applied, progress)
        for d in applied:
            if not torch.isfinite(model.mlp_out_weight(d.layer).param).all():
                raise ValueError(f"the edit made {d.name} non-finite; no weight was changed")
    e.deltas = applied
    e.info = dict(info, norms={d.layer: d.norm for d in applied}, total_seconds=time.perf_counter() - start)
    return journal(model).record(e)
