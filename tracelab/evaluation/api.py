"""`evaluate(...)`: score edits (or any intervention) on CounterFact / zsRE style records.

    >>> res = evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", limit=20, layer=5)
    >>> print(res.table())                        # before/after, ROME-style and EasyEdit-style metrics
    >>> res.save("results/rome.json")
    >>> evaluate(model, edit)                     # an applied Edit: its own requests, base vs edited

Metric names say their convention (see `metrics`): `rome.*` compare P(new) with P(true),
`easyedit.*` are teacher-forced token accuracies.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Callable, ContextManager, Iterable, Mapping

from tqdm.auto import tqdm

from ..editing import Edit, edit as do_edit, journal
from ..editing.api import METHODS
from ..io import atomic_write
from ..models import Model
from ..models.loading import as_model
from .metrics import generate, n_gram_entropy, score_targets
from .records import Record, read_records, to_record

SCORES = ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score",
          "easyedit.reliability", "easyedit.generality", "easyedit.locality")


@dataclass
class EvalResult:
    """Per-record metrics before and after an intervention, and their means.

        >>> res.summary["post"]["rome.efficacy_score"]     # percent
        >>> res.rows[0]["pre"], res.rows[0]["post"]
        >>> EvalResult.load("results/rome.json")
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """`{"pre"|"post": {metric: mean}}`; scores and accuracies in percent."""
        out: dict[str, dict[str, float]] = {}
        for side in ("pre", "post"):
            rows = [r[side] for r in self.rows if r.get(side)]
            if not rows:
                continue
            names = dict.fromkeys(k for r in rows for k in r)
            out[side] = {}
            for name in names:
                values = [r[name] for r in rows if r.get(name) is not None]
                if values:
                    scale = 100.0 if name in SCORES else 1.0
                    out[side][name] = scale * mean(values)
        return out

    def table(self) -> str:
        """The summary as a text table (one row per metric, columns before/after)."""
        s = self.summary
        names = list(dict.fromkeys(k for side in s.values() for k in side))
        lines = [f"{'metric':<32}{'before':>10}{'after':>10}"]
        for n in names:
            cells = [f"{s[side][n]:10.2f}" if n in s.get(side, {}) else f"{'-':>10}" for side in ("pre", "post")]
            lines.append(f"{n:<32}{''.join(cells)}")
        lines.append(f"({len(self.rows)} records; scores in %, magnitudes in probability, entropy in bits)")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"meta": self.meta, "summary": self.summary, "rows": self.rows}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        data = json.loads(Path(path).read_text())
        return cls(data["rows"], data["meta"])


def score_record(model: Model, record: Record, reference: list[list[int]] | None = None,
                 generation: bool = False) -> tuple[dict[str, float | None], list[list[int]]]:
    """Metrics of one record on the model as it is now, and the argmax tokens on its neighbour
    prompts (pass those of the unedited model as `reference` for EasyEdit locality)."""
    r = record.request
    new, true = r.target, r.target_true
    prompts, targets = [r.text], [new]
    prompts += record.paraphrases
    targets += [new] * len(record.paraphrases)
    prompts += [p for p, _ in record.neighbours]
    targets += [a for _, a in record.neighbours]
    compare = true is not None
    if compare:  # the same prompts with the other answer, for ROME's comparisons
        prompts += [r.text, *record.paraphrases, *(p for p, _ in record.neighbours)]
        targets += [true] * (1 + len(record.paraphrases)) + [new] * len(record.neighbours)
    s = score_targets(model, prompts, targets)
    n_p, n_n = len(record.paraphrases), len(record.neighbours)
    base = 1 + n_p + n_n
    nb_argmax = s.argmax[1 + n_p:base]
    m: dict[str, float | None] = {
        "easyedit.reliability": s.accuracy[0],
        "easyedit.generality": mean(s.accuracy[1:1 + n_p]) if n_p else None,
        "easyedit.locality": (mean(float(a == b) for x, y in zip(nb_argmax, reference) for a, b in zip(x, y))
                              if reference is not None and n_n else None),
        "prob_new": s.prob[0],
    }
    if compare:
        p, o = s.prob, base  # o: offset of the "other answer" block
        m["prob_true"] = p[o]
        m["rome.efficacy_score"] = float(s.mean_nll[0] < s.mean_nll[o])
        m["rome.efficacy_magnitude"] = p[0] - p[o]
        if n_p:
            m["rome.paraphrase_score"] = mean(float(s.mean_nll[1 + i] < s.mean_nll[o + 1 + i]) for i in range(n_p))
            m["rome.paraphrase_magnitude"] = mean(p[1 + i] - p[o + 1 + i] for i in range(n_p))
        if n_n:
            m["rome.neighborhood_score"] = mean(float(s.mean_nll[1 + n_p + i] < s.mean_nll[o + 1 + n_p + i])
                                                for i in range(n_n))
            m["rome.neighborhood_magnitude"] = mean(p[1 + n_p + i] - p[o + 1 + n_p + i] for i in range(n_n))
    if generation:
        texts = generate(model, record.generation_prompts or [r.text])
        m["rome.generation_entropy"] = mean(n_gram_entropy(t) for t in texts)
    return m, nb_argmax


def evaluate(
    model: Model, records: str | Path | Iterable[Mapping | Record] | Edit,
    intervention: str | Edit | Callable[[], ContextManager] | None = None, *, limit: int | None = None,
    generation: bool = False, progress: bool = True, **edit_kwargs,
) -> EvalResult:
    """Score `records` before and after `intervention`.

        >>> evaluate(model, "counterfact.json", "rome", limit=50, layer=5)   # edit, score, undo, per record
        >>> evaluate(model, records, "memit", layers=[3, 4, 5])            # all requests in one edit
        >>> evaluate(model, edit)                                           # an applied Edit
        >>> evaluate(model, records, lambda: steering_vector.applied(model)) # any context manager

    `records`: a file / list in any format `read_records` reads, or an applied `Edit` (its
    requests are the records). `intervention`: None (score the model as it is: "pre" only), a
    method name ("rome" edits one record at a time and undoes it; "memit"/"alphaedit" edit all
    records in one call, then undo), an applied `Edit` (before = the journal's base weights), or
    a callable returning a context manager during which the intervention is active.
    `edit_kwargs` go to `tracelab.edit`. The model's weights are the same afterwards.
    """
    user_object, model = model, as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if isinstance(records, Edit):
        intervention = records if intervention is None else intervention
        records = [Record(r) for r in records.requests]
    if isinstance(intervention, Edit) and intervention._journal is not None and intervention._journal.model is not model:
        edited = intervention._journal.model
        raise ValueError(
            f"this {intervention.method} edit was applied to another model object ({edited!r}) than the "
            f"{type(user_object).__name__} given here, which wraps a different copy of the weights: evaluate "
            "the edit on the model it was applied to, or replay it there with Journal.apply")
    recs = read_records(records, limit) if isinstance(records, (str, Path)) else [to_record(r) for r in records][:limit]
    if not recs:
        raise ValueError("no records to evaluate")
    if isinstance(intervention, str) and intervention not in METHODS:
        raise ValueError(f"unknown intervention {intervention!r}: use one of {METHODS}, an Edit, or a callable")
    t0 = time.perf_counter()
    rows = []
    bar = tqdm(recs, desc=f"evaluate ({intervention if isinstance(intervention, str) else 'model'})",
               disable=not progress)

    def score_pair(rec: Record, active: Callable[[], ContextManager], before: Callable[[], ContextManager]):
        pre, ref = _with(before, lambda: score_record(model, rec, None, generation))
        post, _ = _with(active, lambda: score_record(model, rec, ref, generation))
        return {"case_id": rec.case_id, "request": rec.request.to_dict(), "pre": pre, "post": post}

    if intervention is None:
        for rec in bar:
            rows.append({"case_id": rec.case_id, "request": rec.request.to_dict(),
                         "pre": score_record(model, rec, None, generation)[0]})
    elif intervention == "rome":
        for rec in bar:
            e = do_edit(model, rec.request, method="rome", progress=False, **edit_kwargs)
            row = score_pair(rec, nullcontext, lambda: journal(model).base_weights())
            row["edit"] = {"seconds": e.info.get("seconds"), "norms": e.info.get("norms"), "layers": e.layers}
            e.undo()
            rows.append(row)
    elif isinstance(intervention, str):
        pres = [score_record(model, rec, None, generation) for rec in bar]
        e = do_edit(model, [rec.request for rec in recs], method=intervention, progress=progress, **edit_kwargs)
        try:
            for rec, (pre, ref) in zip(recs, pres):
                post, _ = score_record(model, rec, ref, generation)
                rows.append({"case_id": rec.case_id, "request": rec.request.to_dict(), "pre": pre, "post": post})
        finally:
            e.undo()
    elif isinstance(intervention, Edit):
        for rec in bar:
            rows.append(score_pair(rec, nullcontext, lambda: journal(model).base_weights()))
    elif callable(intervention):
        for rec in bar:
            rows.append(score_pair(rec, intervention, nullcontext))
    else:
        raise TypeError(f"intervention must be None, a method name, an Edit or a callable, got {type(intervention).__name__}")
    meta = {"model": model.name, "intervention": intervention if isinstance(intervention, str) or intervention is None
            else type(intervention).__name__, "records": len(recs), "seconds": time.perf_counter() - t0,
            "edit_kwargs": {k: str(v) for k, v in edit_kwargs.items()}}
    return EvalResult(rows, meta)


def _with(context: Callable[[], ContextManager], fn):
    with context():
        return fn()
