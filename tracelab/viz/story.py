"""The main job on one fact, run once and shared: trace → edit at the traced layer → compare → undo.

    >>> s = edit_story(model)                        # the Eiffel Tower → Rome, at the traced MLP peak
    >>> s.layer, s.before.top["prompt"][0], s.after.top["prompt"][0]    # 14, (' Paris', 0.70), (' Rome', 0.95)
    >>> write_report(model, "report.html", story=s); paper_figures(model, story=s)   # no second run

`tracelab demo` runs it once and hands it to the report and the figures; the widget runs it with
`keep=True` at the layer the user clicked and undoes it on **Undo**.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .compare import Snapshot, related_prompts, snapshot

EIFFEL_PROMPT, EIFFEL_SUBJECT = "The Eiffel Tower is located in the city of", "The Eiffel Tower"


def eiffel() -> dict[str, str]:
    """The running example: subject, prompt, a paraphrase, a neighbour and the counterfactual target."""
    return {"subject": EIFFEL_SUBJECT, "new_target": "Rome", **related_prompts(EIFFEL_PROMPT, EIFFEL_SUBJECT)}


@dataclass
class EditStory:
    """What the main job found. `trace`: before the edit; `retrace`: after it (or None); `before` /
    `after`: top predictions and P(old), P(new) on the fact's prompts; `scores`: the edit's own
    request scored base vs edited (`evaluate(...).summary`); `edit`: the `Edit` (undone unless
    the story was told with `keep=True`); `seconds` per step."""

    fact: dict[str, str]
    new_target: str
    layer: int
    trace: Any
    before: Snapshot
    after: Snapshot
    edit: Any
    retrace: Any = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.edit.method


def edit_story(model, fact: Mapping[str, str] | None = None, new_target: str | None = None, *,
               method: str | None = None, layer: int | None = None, trace_result=None,
               prompts: Mapping[str, str] | None = None, samples: int = 3, dtype: str | None = "auto",
               kinds: Sequence[str] = ("resid", "mlp", "attn"), retrace: bool = True, score: bool = True,
               keep: bool = False, progress: bool = True, **edit_options) -> EditStory:
    """Trace `fact` (default `eiffel()`), edit it to `new_target` at `layer` (default: the traced
    MLP peak) with `method` (default: the registry's), snapshot `prompts` (default: the fact's
    prompt, paraphrase and neighbour) before and after, score the edit, re-trace, and undo —
    unless `keep=True`, where the caller undoes `story.edit`. `trace_result`: a trace already
    run (not traced again). `edit_options` go to `tracelab.edit` (e.g. `stats_tokens`). On any
    error the model is left as it was."""
    from ..editing import edit
    from ..evaluation import evaluate
    from ..tracing import trace

    fact = dict(fact or eiffel())
    new_target = new_target or fact.get("new_target")
    if not new_target or not isinstance(new_target, str) or not new_target.strip():
        raise ValueError(f"give the new target (e.g. 'Rome'), got {new_target!r}")
    missing = [k for k in ("subject", "prompt") if k not in fact]
    if missing:
        raise ValueError(f"fact lacks {missing}: give at least subject and prompt, e.g. {eiffel()}")
    options = dict(samples=samples, dtype=dtype, kinds=tuple(kinds), progress=progress)
    if trace_result is not None:  # re-trace as it was traced
        s = trace_result.settings
        options = {k: s[k] for k in ("window", "samples", "seed", "screen") if s.get(k) is not None}
        options.update(dtype=s.get("dtype"), kinds=tuple(trace_result.kinds), progress=progress)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    before_trace = trace_result or trace(model, fact["prompt"], fact["subject"], **options)
    seconds["trace"] = time.perf_counter() - t
    layer = before_trace.peak("mlp") if layer is None else layer
    labelled = dict(prompts) if prompts is not None else \
        {k: fact[k] for k in ("prompt", "paraphrase", "neighbour") if k in fact}
    targets = [before_trace.target, new_target]
    before = snapshot(model, labelled, targets)
    t = time.perf_counter()
    e = edit(model, subject=fact["subject"], prompt=fact["prompt"].replace(fact["subject"], "{}", 1),
             target=new_target, layer=layer, progress=progress, **({"method": method} if method else {}),
             **edit_options)
    seconds["edit"] = time.perf_counter() - t
    try:
        after = snapshot(model, labelled, targets)
        scores = evaluate(model, e, progress=False).summary if score else {}
        t = time.perf_counter()
        retraced = trace(model, fact["prompt"], fact["subject"], new_target, **options) if retrace else None
        seconds["retrace"] = time.perf_counter() - t
    except BaseException:
        e.undo()
        raise
    if not keep:
        e.undo()
    return EditStory(fact, new_target, layer, before_trace, before, after, e, retraced, scores, seconds)
