"""Portability and ripple effects: does the edit carry to the facts that follow from it, and leave the rest?

    >>> tl.evaluate(model, "portability", "rome", limit=20)          # edits of the shipped knowledge graph
    >>> tl.evaluate(model, "MQuAKE-CF-3k.json", "memit", suite="portability")     # or RippleEdits' files
    >>> tl.evaluate(model, "counterfact.json", "rome", suite="counterfact+portability")

Each case carries `Probe`s (see `evaluation.graph`): RippleEdits' categories and multi-hop
questions. Before the edit, the unedited model must give every probe's conditions (the facts the
probe rests on, and its old answer); a probe it does not is dropped for that case, counted in
`port.dropped` (and in the result's `meta["totals"]`), never scored as a failure of the edit.
After the edit a probe counts 1 when the model gives one of its answers (every token the greedy
choice, teacher-forced).

    port.<category>     share of the kept probes of that category given (per case, then averaged)
    portability         share of the kept probes that should follow the edit given
    port.specificity    share of those that should stay (relation specificity, forgetfulness) given
    port.kept, port.dropped   how many probes of the case count / were dropped (counts)

Without a file, the suite reads edits of the knowledge graph (`KnowledgeGraph.edits`); records
from a file that carry no probes get the graph's when their subject and true answer are one of
its facts (so CounterFact's records about the Eiffel Tower are probed too).
"""

from __future__ import annotations

import warnings
from statistics import mean
from typing import Any

from ...editing.requests import Request
from ..graph import CATEGORIES, PROPAGATION, RELATIONS, KnowledgeGraph, fill, knowledge_graph
from ..metrics import gives
from ..records import Record
from . import Suite, register_suite


def graph_records(graph: KnowledgeGraph | None = None, limit: int | None = None) -> list[Record]:
    """The graph's counterfactual edits as records: the request, two facts of the same relation about
    other subjects as neighbours (they keep their answers), and the edit's probes."""
    graph = graph or knowledge_graph()
    records = []
    for i, e in enumerate(graph.edits()[:limit]):
        rel = RELATIONS[e["relation"]]
        text = fill(rel.template, e["subject"])
        subject = fill("{}", e["subject"]) if rel.template.startswith("{}") else e["subject"]  # as the text has it
        others = [s for s in graph.subjects(e["relation"]) if s != e["subject"]]
        start = i % max(len(others), 1)
        neighbours = [(fill(rel.template, s), graph.object(s, e["relation"])) for s in (others[start:] + others)[:2]]
        records.append(Record(Request.from_text(text, subject, e["new"], e["old"]), neighbours=neighbours,
                              case_id=f"{e['subject']}|{e['relation']}", format="portability",
                              probes=graph.probes(e["subject"], e["relation"], e["new"])))
    return records


def graph_probes(record: Record, graph: KnowledgeGraph) -> list:
    """The graph's probes for a record whose subject and true answer are one of its facts ([] if none)."""
    r = record.request
    if r.target_true is None:
        return []
    name = r.subject.lower().removeprefix("the ")
    for (s, relation), o in graph.facts.items():
        if s.lower().removeprefix("the ") == name and o == r.target_true.strip():
            return graph.probes(s, relation, r.target.strip())
    return []


@register_suite
class Portability(Suite):
    """RippleEdits' categories and multi-hop questions per edit; see the module doc."""

    name = "portability"
    percent = ("portability", "port.specificity", *(f"port.{c}" for c in CATEGORIES))
    counts = ("port.kept", "port.dropped")

    def read(self, source: Any = None, limit: int | None = None) -> list[Record]:
        return graph_records(limit=limit) if source is None else super().read(source, limit)

    def complete(self, records: list[Record]) -> None:
        graph = knowledge_graph()
        for record in records:
            if not record.probes:
                record.probes = graph_probes(record, graph)

    def check(self, cases: list[Record]) -> None:
        lacking = [c.case_id for c in cases if not c.probes]
        if len(lacking) == len(cases):
            raise ValueError(f"the portability suite needs `probes` (ripple effects, multi-hop questions) and none of the "
                             f"{len(cases)} records has any: read MQuAKE or RippleEdits files, or records whose subject "
                             "and true answer are a fact of the knowledge graph (or name no file: the graph's own edits)")
        if lacking:
            warnings.warn(f"{len(lacking)} of {len(cases)} records have no probes and get no portability score, "
                          f"e.g. {lacking[:3]}", stacklevel=3)

    def score(self, model, case: Record, reference: Any = None):
        probes = case.probes
        if reference is None:  # the unedited model: which probes it knows enough to count
            conditions = [c for p in probes for c in p.conditions]
            known, at = gives(model, conditions), 0
            reference = []
            for p in probes:
                reference.append(all(known[at:at + len(p.conditions)]))
                at += len(p.conditions)
        kept = [p for p, k in zip(probes, reference) if k]
        given = dict(zip(map(id, kept), gives(model, [(p.prompt, p.answers) for p in kept])))
        m: dict[str, float | None] = {"port.kept": float(len(kept)), "port.dropped": float(len(probes) - len(kept))}
        for category in CATEGORIES:
            of = [given[id(p)] for p in kept if p.category == category]
            if of:
                m[f"port.{category}"] = mean(map(float, of))
        follow = [given[id(p)] for p in kept if p.category in PROPAGATION]
        stay = [given[id(p)] for p in kept if p.category not in PROPAGATION]
        m["portability"] = mean(map(float, follow)) if follow else None
        m["port.specificity"] = mean(map(float, stay)) if stay else None
        return m, reference
