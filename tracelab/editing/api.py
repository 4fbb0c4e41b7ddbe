"""`edit(...)`: write facts into a model with any registered method; recorded in its journal.

    >>> e = edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of",
    ...          target="Rome", method="rome", layer="auto")
    >>> model.predict("The Eiffel Tower is located in the city of", k=1)   # [(' Rome', 0.9…)]
    >>> e.undo()
    >>> edit(model, requests, method="memit", layers=[3, 4, 5, 6, 7])   # many at once

validate → choose layers → prepare what the method needs → transaction → journal. Nothing here
names a method: what a method accepts is what it declares (`registry.Method`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

from ..models import Model
from ..models.loading import as_model
from .checkpoints import find_editor
from .guard import Guard, as_guard
from .journal import Edit, journal
from .transaction import transaction
from .methods import DEFAULT
from .registry import Context, Method, get, names
from .requests import Request, as_requests, check_conflicts
from .toolkit.stats import DEFAULT_TOKENS, KeyStats, check_stats, key_stats
from .toolkit.values import says_target as already_says


def _requests(requests, subject, prompt, target) -> list[Request]:
    if requests is not None and (subject, prompt, target) != (None, None, None):
        raise ValueError("give either requests or subject=/prompt=/target=, not both")
    if requests is None:
        missing = [n for n, v in (("subject", subject), ("prompt", prompt), ("target", target)) if v is None]
        if missing:
            raise ValueError(f"edit() needs subject=, prompt= and target= (missing {missing}), or requests")
        requests = [Request(subject, prompt, target)]
    return check_conflicts(as_requests(requests))


def _layers(model: Model, method: Method, layer, layers, request: Request) -> list[int]:
    """The layers the method edits: given (checked against its rule) or "auto" (its default)."""
    if layers is not None and layer not in (None, "auto"):
        raise ValueError("give either layer= or layers=, not both")
    chosen = layers if layers is not None else layer
    if method.layers == "none":
        if chosen not in (None, "auto"):
            raise ValueError(f"{method.name} does not edit at a layer (got {chosen!r}): leave layer= out")
        return []
    if chosen is None or chosen == "auto":
        return method.default_layers(model, request)
    if isinstance(chosen, (int, range, list, tuple)) and not isinstance(chosen, bool):
        out = [model._check_layer(l) for l in ([chosen] if isinstance(chosen, int) else chosen)]
    else:
        raise TypeError(f"layer must be an int, a list of ints or 'auto', got {chosen!r}")
    if not out:
        raise ValueError("empty layer list: give at least one layer")
    if method.layers == "one" and len(out) != 1:
        spreading = [n for n in names() if get(n).layers == "range"]
        raise ValueError(f"{method.name} edits one layer, got {out}; a layer range needs a method that spreads "
                         f"an edit over several: {spreading}")
    if sorted(set(out)) != out:
        raise ValueError(f"layers must be increasing and distinct, got {out}")
    return out


def _stats(model: Model, layers: list[int], stats, corpus, stats_tokens: int, progress: bool) -> dict[int, KeyStats]:
    if stats is None:
        out = key_stats(model, layers, corpus=corpus, tokens=stats_tokens, progress=progress)
        return out if isinstance(out, dict) else {layers[0]: out}
    if isinstance(stats, KeyStats):
        stats = {stats.layer: stats}
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a KeyStats or {{layer: KeyStats}}, got {type(stats).__name__}")
    missing = [l for l in layers if l not in stats]
    if missing:
        raise ValueError(f"stats given for layers {sorted(stats)} but the edit needs {missing}")
    check_stats(model, stats, layers)
    return dict(stats)


def edit(
    model: Model, requests: Request | Mapping | Iterable[Request | Mapping] | None = None, *,
    subject: str | None = None, prompt: str | None = None, target: str | None = None,
    method: str = DEFAULT, layer: int | Sequence[int] | str = "auto", layers: Sequence[int] | None = None,
    params: Any = None, stats: KeyStats | Mapping[int, KeyStats] | None = None, corpus: str = "wordnet",
    stats_tokens: int = DEFAULT_TOKENS, progress: bool = True, guard: bool | Guard = False,
) -> Edit:
    """Edit `model` so each request's prompt continues with its target; returns the applied `Edit`.

        >>> e = edit(model, subject="Lyon", prompt="{} is a city in", target="Italy", layer=5)
        >>> e = edit(model, [{"subject": "Lyon", "prompt": "{} is in", "target": "Italy"}, ...],
        ...          method="memit", layers=range(3, 8))
        >>> e.info["seconds"], e.info["norms"], e.changes

    `method`: a registered name (`tracelab.editing.registry.names()`; "rome" by default).
    `layer="auto"` lets the method choose (the locate-then-edit methods trace the first request:
    the MLP peak at the subject's last token, or the traced window). `params`: the method's
    `Params` (its paper's defaults when None). `stats`: precomputed `KeyStats` for methods that
    need them (checked against the model), else `key_stats(model, …, corpus=corpus,
    tokens=stats_tokens)` (cached). Requests whose target the model already gives are skipped
    with a warning. Bad input → ValueError/TypeError before any work, and a failed edit changes
    nothing. `guard=True` (or a `Guard`): refuse, with `CollapseRefused` and nothing changed, an
    edit after which the held-out perplexity or a weight's change passes its bound (`editing.guard`);
    the health measured goes into `info["health"]`.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    m = get(method)
    reqs = _requests(requests, subject, prompt, target)
    if len(reqs) > 1 and not m.batch:
        raise ValueError(f"{m.name} edits one fact at a time, got {len(reqs)} requests; edit them one by one, "
                         f"or use a method that edits many at once: {[n for n in names() if get(n).batch]}")
    for r in reqs:
        model.subject_span(r.text, r.subject)  # ValueError (with the tokens) if the subject is missing
    hp = params if params is not None else m.Params()
    if not isinstance(hp, m.Params):
        raise TypeError(f"params for {m.name} must be {m.Params.__name__}, got {type(hp).__name__}")
    health_guard = as_guard(guard)
    chosen = _layers(model, m, layer, layers, reqs[0])
    todo = [r for r in reqs if not already_says(model, r)]
    if len(todo) < len(reqs) and m.already_said == "refuse":
        said = [f"{r.text!r} → {r.target!r}" for r in reqs if r not in todo][:5]
        raise ValueError(f"the model already answers {said} with the target: {m.name} has nothing to edit there")
    if len(todo) < len(reqs):
        skipped = [f"{r.text!r} → {r.target!r}" for r in reqs if r not in todo][:5]
        warnings.warn(f"the model already answers {len(reqs) - len(todo)} request(s) with the target; "
                      f"skipping them (no-op): {skipped}", stacklevel=2)
    hparams = {"params": hp.to_dict()}
    e = Edit(m.name, todo, chosen, hparams)
    if not todo:
        return e
    prepared = {}
    if "stats" in m.needs:
        prepared = _stats(model, chosen, stats, corpus, stats_tokens, progress)
        hparams.update(corpus=corpus, stats_tokens=stats_tokens,
                       stats={str(l): s.provenance for l, s in prepared.items()})
    editor = _editor(model, m, chosen, hp, hparams) if m.trained else None
    if health_guard is not None:
        health_guard.base_perplexity(model)  # measured on the unedited model, before this edit's transaction
        hparams["guard"] = health_guard.to_dict()
    start = time.perf_counter()
    with transaction(model) as tx:
        ctx = Context(tx, journal(model), prepared, progress, editor=editor)
        for change in m.apply(model, todo, chosen, hp, ctx):
            if change not in tx.changes:
                tx.apply(change)
        if health_guard is not None:
            ctx.info["health"] = health_guard.check(model, tx.changes)
    e.changes = tx.changes
    e.info = dict(ctx.info, norms={d.layer: d.norm for d in e.deltas if d.layer is not None},
                  total_seconds=time.perf_counter() - start)
    return journal(model).record(e)


def _editor(model: Model, m, layers: list[int], params, hparams: dict):
    """A trained method's network from its checkpoint for this model and layers (ValueError naming
    the training command when there is none); its provenance goes into the edit's hparams."""
    tensors, meta = find_editor(model, m.name, layers, getattr(params, "checkpoint", None))
    editor = m.init_editor(model, layers, type(params)(**meta["params"]), None)
    editor.load_state_dict(tensors)
    hparams["checkpoint"] = {k: meta.get(k) for k in ("weights", "data", "step", "best", "created")}
    editor.checkpoint = {k: meta[k] for k in ("path", "tensors", "weights")}  # where a change may reload it
    return editor.eval()
