"""`evaluate(...)`: score edits (or any intervention) on a suite's cases.

    >>> res = evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", limit=20, layer=5)
    >>> print(res.table())                        # before/after, ROME-style and EasyEdit-style metrics
    >>> evaluate(model, "zsre", method="memit", limit=50, layers=[3, 4, 5])     # a suite by name
    >>> evaluate(model, records, "alphaedit", mode="sequential", checkpoints=(1, 10, 100))
    >>> evaluate(model, edit)                     # an applied Edit: its own requests, base vs edited

Metric names say their convention (see `suites`): `rome.*` compare P(new) with P(true),
`easyedit.*` are teacher-forced token accuracies, `known.*` facts the model should keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

from ..editing import Edit
from ..models import Model
from ..models.loading import as_model
from .records import Record, read_records, to_record
from .result import EvalResult
from .runner import CHECKPOINTS, run
from .suites import Suite, get_suite, suite_for, suite_names


def read_cases(records, suite: Suite | None, limit: int | None, generation: bool) -> tuple[list[Record], Suite | None]:
    """The first `limit` cases of `records` and the suite to score them (`suite`, or the one a
    suite's name given as `records` names: its default data)."""
    if isinstance(records, str) and records in suite_names():  # a suite by name: its default data
        named = get_suite(records, generation=generation)
        cases = named.read(None, limit)
        if suite is not None:
            suite.complete(cases)
        return cases, suite or named
    if suite is not None:  # the suite reads them: it may add what it scores (the knowledge graph's probes)
        return suite.read(records, limit), suite
    if isinstance(records, (str, Path)):
        return read_records(records, limit), suite
    return [to_record(r) for r in records][:limit], suite


def evaluate(
    model: Model, records: str | Path | Iterable[Mapping | Record] | Edit,
    intervention: str | Edit | Callable[[], ContextManager] | None = None, *, method: str | None = None,
    suite: str | Suite | None = None, mode: str | None = None, checkpoints: Sequence[int] = CHECKPOINTS,
    batch_size: int = 1, at_checkpoint: Callable[[Model], dict] | None = None, limit: int | None = None,
    generation: bool = False, progress: bool = True, unedited: Sequence[tuple[dict, Any]] | None = None,
    **edit_kwargs: Any,
) -> EvalResult:
    """Score `records` before and after `intervention`.

        >>> evaluate(model, "counterfact.json", "rome", limit=50, layer=5)   # edit, score, undo, per record
        >>> evaluate(model, records, "memit", layers=[3, 4, 5])            # all requests in one edit
        >>> evaluate(model, edit)                                           # an applied Edit
        >>> evaluate(model, "known", lambda: tl.steer(model, vector, 4.0)) # any context manager

    `records`: a file / list in any format `read_records` reads, a suite name ("counterfact",
    "zsre", "known": its default data), or an applied `Edit` (its requests are the records).
    `intervention` (or `method=`): None (score the model as it is: "pre" only), a registered
    method name (see `runner` for `mode` — "single" by default for one-at-a-time methods, "batch"
    for the others, or "sequential" with `checkpoints`, `batch_size` and `at_checkpoint(model) -> dict`
    for more figures at each checkpoint, e.g. a held-out perplexity), an applied `Edit`
    (before = the journal's unedited model), or a callable returning a context manager during
    which the intervention is active. `suite`: how cases are scored (default: from the records'
    format; `generation=True` adds CounterFact's fluency). `unedited`: the cases' scores on the
    unedited model, when several methods share them (see `runner.run`). `edit_kwargs` go to `tracelab.edit`.
    The model's weights are the same afterwards.
    """
    user_object, model = model, as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if method is not None:
        if intervention is not None:
            raise ValueError("give the intervention either positionally or as method=, not both")
        intervention = method
    if isinstance(records, Edit):
        intervention = records if intervention is None else intervention
        records = [Record(r) for r in records.requests]
    if isinstance(intervention, Edit) and intervention._journal is not None and intervention._journal.model is not model:
        raise ValueError(
            f"this {intervention.method} edit was applied to another model object ({intervention._journal.model!r}) "
            f"than the {type(user_object).__name__} given here, which wraps a different copy of the weights: "
            "evaluate the edit on the model it was applied to, or replay it there with Journal.apply")
    if intervention is not None and not isinstance(intervention, (str, Edit)) and not callable(intervention):
        raise TypeError(f"intervention must be None, a method name, an Edit or a callable, "
                        f"got {type(intervention).__name__}")
    given = get_suite(suite, generation=generation) if suite is not None else None
    cases, given = read_cases(records, given, limit, generation)
    if not cases:
        raise ValueError("no records to evaluate")
    chosen = given or get_suite(suite_for(cases), generation=generation)
    return run(model, chosen, cases, intervention, mode=mode, checkpoints=checkpoints, batch_size=batch_size,
               at_checkpoint=at_checkpoint, edit_kwargs=edit_kwargs, progress=progress, unedited=unedited)
