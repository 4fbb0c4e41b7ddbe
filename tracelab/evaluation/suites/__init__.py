"""Evaluation suites: which cases an intervention is judged on, and how one case is scored.

    >>> suite = get_suite("zsre")
    >>> cases = suite.read("../shared/data/zsre-sample.json", limit=50)
    >>> metrics, reference = suite.score(model, cases[0])          # on the model as it is now
    >>> suite.score(model, cases[0], reference)                    # after an edit: locality vs before

A `Suite` reads cases (`evaluation.records.Record`: the edit request and the prompts that test
it) and scores one case on the model as it is; `score` returns the metrics and a reference (what
the unedited model said, for locality) that the runner passes back when scoring after the edit.
Metric names keep their convention's prefix (`rome.*`, `easyedit.*`, `known.*`). Suites score
through `Model.query_text` and the model's forward, so weight, memory and in-context changes are
scored alike. Register a new one with `@register_suite`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from ...data import DATA_ENV, shared_data
from ..records import Record, read_records



class Suite:
    """One evaluation suite; see the module doc. `edits`: its cases are edit requests (False:
    facts the model should keep, scored under an intervention made elsewhere). `percent`: its
    metrics that are shares of cases; `counts`: its metrics that are counts, summed over the cases'
    before-scores into the result's `meta["totals"]`. `needs`: the `Record` fields (dotted:
    "request.target_true") every case must have, checked before any work. `default_file`: read
    when the suite is named without data."""

    name: ClassVar[str]
    edits: ClassVar[bool] = True
    percent: ClassVar[tuple[str, ...]] = ()
    counts: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    default_file: ClassVar[str | None] = None

    def __init__(self, generation: bool = False) -> None:
        self.generation = generation  # also score generated text, where the suite has such a metric

    def read(self, source: Any = None, limit: int | None = None) -> list[Record]:
        """Cases from a file, a list of dicts/Records, or (None) the suite's default data."""
        if source is None:
            source = self._default_source()
        records = read_records(source, limit) if isinstance(source, (str, os.PathLike)) else \
            read_records(list(source), limit)
        self.complete(records)
        return records

    def complete(self, records: list[Record]) -> None:
        """Add what this suite scores to records read by another (e.g. the knowledge graph's probes)."""

    def _default_source(self):
        if self.default_file is None:
            raise ValueError(f"the {self.name} suite has no default data: give a records file")
        return shared_data(self.default_file)

    def check(self, cases: list[Record]) -> None:
        """ValueError naming the field when a case lacks what the suite needs (see `needs`)."""
        for name in self.needs:
            lacking = [c.case_id if c.case_id is not None else i for i, c in enumerate(cases)
                       if _field(c, name) in (None, "", [], ())]
            if lacking:
                raise ValueError(f"the {self.name} suite needs `{name}` in every record, and {len(lacking)} of "
                                 f"{len(cases)} have none (e.g. {lacking[:5]})")

    def score(self, model, case: Record, reference: Any = None) -> tuple[dict[str, float | None], Any]:
        raise NotImplementedError


def _field(record: Record, dotted: str):
    value = record
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


_SUITES: dict[str, type[Suite]] = {}


def register_suite(cls: type[Suite]) -> type[Suite]:
    """Make a `Suite` class available by its `name` (a class decorator)."""
    _SUITES[cls.name] = cls
    return cls


def get_suite(name: str | Suite, **options) -> Suite:
    """The suite `name` (an instance made with `options`, e.g. `generation=True`), or `name` itself;
    "a+b" scores every case with both (`Combined`, one edit per case).

        >>> get_suite("counterfact+robustness", generation=True)
    """
    if isinstance(name, Suite):
        return name
    if "+" in name:
        return Combined([get_suite(part, **options) for part in name.split("+")])
    if name not in _SUITES:
        raise ValueError(f"unknown suite {name!r}: registered suites are {suite_names()} (join them with '+')")
    return _SUITES[name](**options)


class Combined(Suite):
    """Several suites scoring the same cases, after the same edit: metrics merged, references kept apart.
    It reads cases as its first suite does."""

    def __init__(self, parts: list[Suite]) -> None:
        super().__init__(any(p.generation for p in parts))
        if not parts or not all(p.edits for p in parts) and any(p.edits for p in parts):
            raise ValueError("combine suites of edit requests, or suites of facts to keep, not both")
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.edits = all(p.edits for p in parts)
        self.percent = tuple(m for p in parts for m in p.percent)
        self.counts = tuple(m for p in parts for m in p.counts)
        self.default_file = parts[0].default_file

    def read(self, source: Any = None, limit: int | None = None) -> list[Record]:
        records = self.parts[0].read(source, limit)
        for part in self.parts[1:]:
            part.complete(records)
        return records

    def complete(self, records: list[Record]) -> None:
        for part in self.parts:
            part.complete(records)

    def check(self, cases: list[Record]) -> None:
        for part in self.parts:
            part.check(cases)

    def score(self, model, case: Record, reference: Any = None):
        metrics, references = {}, []
        for part, ref in zip(self.parts, reference or [None] * len(self.parts)):
            m, r = part.score(model, case, ref)
            metrics.update(m)
            references.append(r)
        return metrics, references


def suite_names() -> list[str]:
    return sorted(_SUITES)


def suite_for(cases: list[Record]) -> str:
    """The suite of records read from a file: the shape of the first (CounterFact by default)."""
    return cases[0].format if cases and cases[0].format in _SUITES else "counterfact"


from . import counterfact, known, portability, robustness, zsre  # noqa: E402,F401  (each registers itself)

__all__ = ["Combined", "DATA_ENV", "Suite", "get_suite", "register_suite", "suite_for", "suite_names"]
