"""A small knowledge graph the project ships, and what an edit to one of its facts should change.

    >>> g = knowledge_graph()                         # tracelab/data/graph.json, checked when read
    >>> g.object("the Eiffel Tower", "P131")          # 'Paris'
    >>> g.probes("the Eiffel Tower", "P131", "Rome")  # [Probe("compositionality_1", "The Eiffel Tower is located
    ...                                               #   in the country of", answers=("Italy",), before=("France",)), ...]

Entities (landmarks, cities, countries, companies, people, and the languages, continents and
currencies countries have) are joined by facts `(subject, relation, object)`. Every fact, every
alias and every 2- and 3-hop chain in the file is one the embedded model answers (each token of
the answer its greedy choice); `tracelab/data/build_graph.py` writes it from candidate facts and
counts what it dropped.

For an edit (s, r, o → o*) the graph gives RippleEdits' categories (Cohen et al. 2024) and
MQuAKE-style multi-hop questions (Zhong et al. 2023) as `Probe`s:

    logical_generalization   the inverse relation: (France, capital, Lyon) → "Lyon is the capital of" France
    compositionality_1       a chain from s through the edit: "The Eiffel Tower is located in the country of" Italy
    compositionality_2       a chain from another subject into s: "The capital of the country where the Eiffel
                             Tower is located is" Lyon (after editing France's capital)
    subject_aliasing         the edit asked with an alias of s: "The capital of the French Republic is" Lyon
    relation_specificity     s's other facts, which should stay: "The currency of France is the" euro
    multi_hop_3              three hops with the edit at any of them

Forgetfulness (RippleEdits' other objects of a one-to-many relation) has no probe here: every
relation in this graph is one-to-one; the RippleEdits reader (`records`) scores it from their files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..io import UnreadableFile

FORMAT = "tracelab-knowledge-graph/1"


@dataclass(frozen=True)
class Relation:
    """`template`: the fact as a cloze ("{}" the subject); `phrase`: its object named through the
    subject, for composing ("the city where {} is located"); `inverse`: the relation read backwards."""

    id: str
    template: str
    phrase: str
    inverse: str | None = None


RELATIONS = {r.id: r for r in [
    Relation("P131", "{} is located in the city of", "the city where {} is located"),
    Relation("P17", "{} is located in the country of", "the country where {} is located"),
    Relation("P36", "The capital of {} is", "the capital of {}", inverse="P1376"),
    Relation("P1376", "{} is the capital of", "the country whose capital is {}", inverse="P36"),
    Relation("P37", "The official language of {} is", "the official language of {}"),
    Relation("P30", "{} is located on the continent of", "the continent where {} is located"),
    Relation("P38", "The currency of {} is the", "the currency of {}"),
    Relation("P159", "{} is headquartered in the city of", "the city where {} is headquartered"),
    Relation("P19", "{} was born in the city of", "the city where {} was born"),
    Relation("P27", "{} is a citizen of", "the country of which {} is a citizen"),
]}

# Two hops said as one relation of the first subject: (r1, r2) → (template, phrase).
DIRECT = {
    ("P131", "P17"): ("{} is located in the country of", "the country where {} is located"),
    ("P17", "P30"): ("{} is located on the continent of", "the continent where {} is located"),
    ("P19", "P17"): ("{} was born in the country of", "the country where {} was born"),
    ("P159", "P17"): ("{} is headquartered in the country of", "the country where {} is headquartered"),
}

# Facts of the edited subject that the edit leaves undefined, so no probe of relation specificity:
# a city moved to another country cannot stay the capital of the old one.
ENTANGLED = {("P17", "P1376"), ("P1376", "P17")}

CATEGORIES = ("logical_generalization", "compositionality_1", "compositionality_2", "subject_aliasing",
              "relation_specificity", "forgetfulness", "multi_hop_2", "multi_hop_3", "multi_hop_4")
PROPAGATION = ("logical_generalization", "compositionality_1", "compositionality_2", "subject_aliasing",
               "multi_hop_2", "multi_hop_3", "multi_hop_4")  # should follow the edit; the rest should stay


@dataclass(frozen=True)
class Probe:
    """One test of an edit's ripple effects: after the edit, `prompt` should continue with one of
    `answers`. `before`: what the unedited model should say (None where the edit asks something
    new); `conditions`: `(prompt, answers)` the unedited model must give for the probe to count
    (MQuAKE's and RippleEdits' filter: a probe whose facts the model never knew is dropped, not failed)."""

    category: str
    prompt: str
    answers: tuple[str, ...]
    before: tuple[str, ...] | None = None
    conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    hops: int = 1

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown probe category {self.category!r}: use one of {CATEGORIES}")
        if not self.answers or not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ValueError(f"probe {self.prompt!r} needs at least one non-empty answer, got {self.answers!r}")

    def to_dict(self) -> dict:
        return {"category": self.category, "prompt": self.prompt, "answers": list(self.answers),
                "before": list(self.before) if self.before else None, "hops": self.hops,
                "conditions": [[p, list(a)] for p, a in self.conditions]}

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        return cls(d["category"], d["prompt"], tuple(d["answers"]), tuple(d["before"]) if d.get("before") else None,
                   tuple((p, tuple(a)) for p, a in d.get("conditions", ())), d.get("hops", 1))


def fill(template: str, subject: str) -> str:
    """The cloze with its subject, the sentence's first letter capitalised."""
    text = template.replace("{}", subject)
    return text[0].upper() + text[1:]


def chain_prompt(head: str, relations: tuple[str, ...]) -> str:
    """The cloze that asks for the end of a chain of `relations` from `head` (2 or 3 hops).

        >>> chain_prompt("the Eiffel Tower", ("P131", "P17", "P36"))
        'The capital of the country where the Eiffel Tower is located is'
    """
    if len(relations) == 2 and tuple(relations) in DIRECT:
        return fill(DIRECT[tuple(relations)][0], head)
    rs, phrase = list(relations), head
    if len(rs) >= 3 and tuple(rs[:2]) in DIRECT:
        phrase = DIRECT[tuple(rs[:2])][1].replace("{}", phrase)
        rs = rs[2:]
    elif len(rs) >= 3 and tuple(rs[1:3]) in DIRECT:
        return fill(DIRECT[tuple(rs[1:3])][0], RELATIONS[rs[0]].phrase.replace("{}", phrase))
    for r in rs[:-1]:
        phrase = RELATIONS[r].phrase.replace("{}", phrase)
    return fill(RELATIONS[rs[-1]].template, phrase)


@dataclass
class KnowledgeGraph:
    """Facts `{(subject, relation): object}`, `aliases` `{entity: {alias: [relations it is known for]}}`,
    `types` `{entity: kind}`, `chains` (tuples of relations from a head entity, known as a whole)."""

    facts: dict[tuple[str, str], str]
    types: dict[str, str]
    aliases: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    chains: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def object(self, subject: str, relation: str) -> str | None:
        return self.facts.get((subject, relation))

    def path(self, head: str, relations: tuple[str, ...]) -> list[str] | None:
        """The entities a chain visits from `head`, or None where the graph has no such fact."""
        entities = [head]
        for r in relations:
            nxt = self.facts.get((entities[-1], r))
            if nxt is None:
                return None
            entities.append(nxt)
        return entities

    def subjects(self, relation: str) -> list[str]:
        return sorted(s for s, r in self.facts if r == relation)

    def probes(self, subject: str, relation: str, new: str) -> list[Probe]:
        """What the edit (subject, relation, old → new) should change and keep; see the module doc."""
        old = self.object(subject, relation)
        if old is None:
            raise ValueError(f"the knowledge graph has no fact ({subject!r}, {relation}): its facts of {relation} are "
                             f"about {self.subjects(relation)[:8]}...")
        rel = RELATIONS[relation]
        out: list[Probe] = []
        if rel.inverse and self.object(old, rel.inverse) == subject:
            out.append(Probe("logical_generalization", fill(RELATIONS[rel.inverse].template, new), (subject,),
                             conditions=((fill(RELATIONS[rel.inverse].template, old), (subject,)),)))
        for alias, known in sorted(self.aliases.get(subject, {}).items()):
            if relation in known:
                prompt = fill(rel.template, alias)
                out.append(Probe("subject_aliasing", prompt, (new,), (old,), ((prompt, (old,)),)))
        out += self._chain_probes(subject, relation, old, new)
        dependent = {DIRECT[(relation, r2)][0] for r1, r2 in DIRECT if r1 == relation}
        for (s, r), o in sorted(self.facts.items()):
            if s == subject and r != relation and RELATIONS[r].template not in dependent \
                    and (relation, r) not in ENTANGLED:
                prompt = fill(RELATIONS[r].template, s)
                out.append(Probe("relation_specificity", prompt, (o,), (o,), ((prompt, (o,)),)))
        return out

    def _chain_probes(self, subject: str, relation: str, old: str, new: str) -> Iterator[Probe]:
        for head, relations in self.chains:
            before = self.path(head, relations)
            for hop, r in enumerate(relations):
                if before is None or (before[hop], r) != (subject, relation):
                    continue
                after = [*before[:hop + 1], new]
                for r2 in relations[hop + 1:]:
                    nxt = self.object(after[-1], r2)
                    if nxt is None:
                        break
                    after.append(nxt)
                if len(after) != len(before) or after[-1] == before[-1] or after[-1] in before[:-1]:
                    continue  # the graph cannot say where the new chain ends, it ends where it did, or loops back
                category = ("compositionality_1" if hop == 0 else "compositionality_2") if len(relations) == 2 \
                    else f"multi_hop_{len(relations)}"
                prompt = chain_prompt(head, relations)
                known = [(fill(RELATIONS[r2].template, after[i + 1]), (after[i + 2],))
                         for i, r2 in enumerate(relations[hop + 1:], start=hop)]
                yield Probe(category, prompt, (after[-1],), (before[-1],), ((prompt, (before[-1],)), *known),
                            len(relations))

    def edits(self, relations: tuple[str, ...] = ("P131", "P17", "P36", "P19", "P159", "P27")) -> list[dict]:
        """Counterfactual edits of the graph's facts, each with a new object of the same kind whose
        own facts let the edit's chains be followed (chosen by a hash of the fact, so the same every
        time): dicts `{subject, relation, old, new}`, the ones with at least one propagation probe,
        the relations taking turns."""
        by_relation: dict[str, list[dict]] = {}
        for relation in relations:
            out = by_relation.setdefault(relation, [])
            objects = sorted({o for (s, r), o in self.facts.items() if r == relation})
            for subject in self.subjects(relation):
                old = self.object(subject, relation)
                choices = [o for o in objects if o != old and o != subject]
                if not choices:
                    continue
                start = int(hashlib.sha256(f"{subject}|{relation}".encode()).hexdigest(), 16) % len(choices)
                for new in choices[start:] + choices[:start]:
                    if any(p.category in PROPAGATION for p in self.probes(subject, relation, new)):
                        out.append({"subject": subject, "relation": relation, "old": old, "new": new})
                        break
        turns = itertools.zip_longest(*by_relation.values())
        return [e for turn in turns for e in turn if e is not None]

    # ---- the file ------------------------------------------------------------------------------
    def to_json(self, meta: dict) -> dict:
        body = {"facts": [[s, r, o] for (s, r), o in sorted(self.facts.items())], "types": dict(sorted(self.types.items())),
                "aliases": self.aliases, "chains": [[h, list(rs)] for h, rs in self.chains]}
        return {"format": FORMAT, "meta": meta, **body, "sha256": _digest(body)}

    @classmethod
    def from_json(cls, data: dict, source: str = "the knowledge graph") -> KnowledgeGraph:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UnreadableFile(f"{source} is not a {FORMAT} file")
        body = {k: data.get(k) for k in ("facts", "types", "aliases", "chains")}
        if data.get("sha256") != _digest(body):
            raise UnreadableFile(f"{source} does not match its checksum: it changed after it was built "
                                 "(rebuild it with python -m tracelab.data.build_graph)")
        facts = {(s, r): o for s, r, o in body["facts"]}
        unknown = sorted({r for _, r in facts} - set(RELATIONS))
        if unknown:
            raise UnreadableFile(f"{source} uses relations {unknown} that this version does not define")
        return cls(facts, body["types"], body["aliases"], [(h, tuple(rs)) for h, rs in body["chains"]], data["meta"])


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def graph_path() -> Path:
    return Path(str(resources.files("tracelab.data").joinpath("graph.json")))


@lru_cache(maxsize=4)
def knowledge_graph(path: str | None = None) -> KnowledgeGraph:
    """The shipped graph (or the one at `path`), verified against its checksum."""
    p = Path(path) if path else graph_path()
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UnreadableFile(f"cannot read the knowledge graph {p}: {e}") from e
    return KnowledgeGraph.from_json(data, str(p))
