"""The runner: pre / post / undo for any intervention, in the three modes of the literature.

    >>> run(model, get_suite("zsre"), cases, "rome", mode="single", edit_kwargs={"layer": 5})
    >>> run(model, suite, cases, "memit", mode="batch", edit_kwargs={"layers": [3, 4, 5]})
    >>> run(model, suite, cases, "alphaedit", mode="sequential", checkpoints=(1, 10, 100))

- `single`: per case, score, edit, score, undo (ROME's protocol). A case whose edit the method
  refuses (`EditRefused`: nothing changed) is scored as the model is, and says so in its row.
- `batch`: score every case, one edit of all of them, score every case, undo (MEMIT's).
- `sequential`: score every case, then edit them one after another (`batch_size` at a time) with
  no undo, scoring *all cases edited so far* after each checkpoint number of edited cases
  (the lifelong-editing papers' protocol); everything is undone at the end.

Interventions: a registered method name (edits through `tracelab.edit`), an applied `Edit`
(before = `journal(model).suspended()`), a callable returning a context manager (steering), or
None (score the model as it is). The suite scores through the model, so how a prompt is asked is
up to the intervention's changes (a `PromptContext` rewrites it), with no special case here.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

from tqdm.auto import tqdm

from ..editing import Edit, journal, registry
from ..editing.registry import EditRefused
from ..editing import edit as do_edit
from ..models import Model
from .records import Record
from .result import EvalResult, summarise
from .suites import Suite

MODES = ("single", "batch", "sequential")
CHECKPOINTS = (1, 10, 100, 1000)


def check_mode(suite: Suite, intervention: Any, mode: str | None) -> str | None:
    """The mode to run `intervention` in (None when nothing is edited here); ValueError if it
    cannot run in the one asked."""
    if not isinstance(intervention, str):
        if mode is not None:
            raise ValueError(f"mode={mode!r} is for editing methods; this intervention is already applied "
                             f"(or a context manager): leave mode out")
        return None
    method = registry.get(intervention)
    if not suite.edits:
        raise ValueError(f"the {suite.name} suite holds facts to keep, not edit requests: evaluate it under an "
                         "intervention made elsewhere (an Edit, a steering context) or with none")
    mode = mode or ("batch" if method.batch else "single")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    if mode == "batch" and not method.batch:
        raise ValueError(f"{method.name} edits one fact at a time: use mode='single' or 'sequential'")
    if mode == "sequential" and not method.sequential:
        raise ValueError(f"{method.name} does not stack edits: use mode='single' or 'batch'")
    return mode


def _row(case: Record, pre, post=None) -> dict[str, Any]:
    row = {"case_id": case.case_id, "request": case.request.to_dict(), "pre": pre}
    if post is not None:
        row["post"] = post
    return row


def _scored_in(context: Callable[[], ContextManager], fn):
    with context():
        return fn()


def run(model: Model, suite: Suite, cases: Sequence[Record], intervention: Any = None, *,
        mode: str | None = None, checkpoints: Sequence[int] = CHECKPOINTS, batch_size: int = 1,
        at_checkpoint: Callable[[Model], dict] | None = None, edit_kwargs: dict | None = None,
        progress: bool = True, unedited: Sequence[tuple[dict, Any]] | None = None) -> EvalResult:
    """Score `cases` with `suite` before and after `intervention`; see the module doc. The model
    is as it was afterwards (every edit made here is undone). `at_checkpoint(model) -> dict`
    (sequential mode): more figures at each checkpoint and before the first edit (perplexity).
    `unedited`: the cases' `suite.score` on this model unedited, made once for many methods
    (`compare`); by default they are scored here."""
    mode = check_mode(suite, intervention, mode)
    suite.check(list(cases))
    if mode == "sequential" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if unedited is not None and (len(unedited) != len(cases) or not isinstance(intervention, str)):
        raise ValueError(f"unedited scores are for an editing method's cases: got {len(unedited)} for {len(cases)} cases")
    before_edit = (lambda i, c: unedited[i]) if unedited is not None else (lambda i, c: suite.score(model, c))
    edit_kwargs = dict(edit_kwargs or {})
    t0 = time.perf_counter()
    label = intervention if isinstance(intervention, str) else type(intervention).__name__ if intervention else "model"
    bar = tqdm(cases, desc=f"evaluate ({label}, {suite.name})", disable=not progress)
    meta: dict[str, Any] = {}
    if intervention is None:
        rows = [_row(c, suite.score(model, c)[0]) for c in bar]
    elif isinstance(intervention, Edit) or callable(intervention) and not isinstance(intervention, str):
        before = (lambda: journal(model).suspended()) if isinstance(intervention, Edit) else nullcontext
        active = nullcontext if isinstance(intervention, Edit) else intervention
        rows = []
        for c in bar:
            pre, ref = _scored_in(before, lambda: suite.score(model, c))
            rows.append(_row(c, pre, _scored_in(active, lambda: suite.score(model, c, ref)[0])))
    elif mode == "single":
        rows = []
        for i, c in enumerate(bar):
            pre, ref = before_edit(i, c)
            try:
                made = edit_all(model, c.requests, intervention, edit_kwargs)
            except EditRefused as refused:  # nothing changed: scored as the model is
                rows.append({**_row(c, pre, suite.score(model, c, ref)[0]), "edit": {"refused": str(refused)}})
                continue
            try:
                rows.append(_row(c, pre, suite.score(model, c, ref)[0]))
                rows[-1]["edit"] = {"seconds": sum(e.info.get("total_seconds") or 0.0 for e in made),
                                    "layers": made[0].layers, "norms": made[0].info.get("norms"),
                                    "parameters": sum(e.info.get("parameters_changed", sum(c.size for c in e.changes))
                                                      for e in made)}
            finally:
                for e in reversed(made):
                    e.undo()
    elif mode == "batch":
        pres = [before_edit(i, c) for i, c in enumerate(bar)]
        e = do_edit(model, [r for c in cases for r in c.requests], method=intervention, progress=progress, **edit_kwargs)
        try:
            rows = [_row(c, pre, suite.score(model, c, ref)[0]) for c, (pre, ref) in zip(cases, pres)]
        finally:
            e.undo()
        meta["edit_seconds"] = e.info.get("total_seconds")
    else:
        rows, meta = _sequential(model, suite, cases, intervention, checkpoints, batch_size, at_checkpoint,
                                 edit_kwargs, [before_edit(i, c) for i, c in enumerate(bar)])
    if suite.counts:  # e.g. the probes a suite dropped because the unedited model did not know them
        meta["totals"] = {name: sum(r["pre"].get(name) or 0 for r in rows) for name in suite.counts}
    return EvalResult(rows, {"model": model.name, "suite": suite.name, "intervention": label, "mode": mode,
                             "cases": len(cases), "seconds": time.perf_counter() - t0, "percent": list(suite.percent),
                             "edit_kwargs": {k: str(v) for k, v in edit_kwargs.items()}, **meta})


def edit_all(model: Model, requests: list, method: str, edit_kwargs: dict) -> list[Edit]:
    """`requests` edited: in one edit where the method edits many at once (or there is one), else one
    after another; on a refusal the ones made are undone and the refusal raised (nothing changed)."""
    if len(requests) == 1 or registry.get(method).batch:
        return [do_edit(model, requests if len(requests) > 1 else requests[0], method=method, progress=False,
                        **edit_kwargs)]
    made: list[Edit] = []
    try:
        for r in requests:
            made.append(do_edit(model, r, method=method, progress=False, **edit_kwargs))
    except BaseException:
        for e in reversed(made):
            e.undo()
        raise
    return made


def _sequential(model, suite, cases, method, checkpoints, batch_size, at_checkpoint, edit_kwargs, pres):
    """Edits applied one batch after another, no undo in between; every case edited so far is
    scored at each checkpoint. Returns `(rows, meta)`; rows' `post` is at the last checkpoint."""
    n = len(cases)
    at = sorted({c for c in checkpoints if isinstance(c, int) and 0 < c < n} | {n})
    edits, summaries, posts, seconds, sizes, refusals = [], {}, [], [], [], []
    health = at_checkpoint or (lambda model: {})
    before = health(model)
    try:
        for start in range(0, n, batch_size):
            chunk = cases[start:start + batch_size]
            try:
                made = edit_all(model, [r for c in chunk for r in c.requests], method, edit_kwargs)
                edits += made
                seconds.append(sum(e.info.get("total_seconds", 0.0) for e in made))
                sizes.append(sum(c.size for e in made for c in e.changes))
            except EditRefused as refused:  # nothing changed; the stream goes on
                refusals.append(str(refused))
            done = start + len(chunk)
            for checkpoint in [c for c in at if start < c <= done]:
                posts = [suite.score(model, c, ref)[0] for c, (_, ref) in zip(cases[:checkpoint], pres)]
                summaries[checkpoint] = {**summarise(posts, suite.percent), **health(model)}
    finally:
        for e in reversed(edits):  # newest first: each undo finds its weights as it left them
            e.undo()
    rows = [_row(c, pre, post) for c, (pre, _), post in zip(cases, pres, posts)]
    return rows, {"checkpoints": {str(k): v for k, v in summaries.items()}, "batch_size": batch_size,
                  "edit_seconds": seconds, "edit_parameters": sizes, "before": before, "refused": refusals}
