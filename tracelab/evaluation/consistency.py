"""ROME's reference consistency: does what the model writes read like text about the new answer?

    >>> reference_score(["Rome is the capital of Italy, and ..."], "Rome")    # 0.31 (None: no text about it)

Meng et al. (2022) take the cosine between the TF-IDF vector of the generations after the edit and
that of Wikipedia texts about subjects that share the new attribute. Offline, the reference text
about an entity is written from the knowledge graph (`evaluation.graph`): a sentence for every
fact that names it, and for every other fact of the subjects that share one with it ("The
Colosseum is located in the city of Rome. The Colosseum ..."). TF-IDF is fitted on the reference
texts of every entity, so the score compares generations on the graph's vocabulary: a narrower
reference than Wikipedia's, said where the figure is reported.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .graph import RELATIONS, KnowledgeGraph, fill, knowledge_graph


def _sentence(subject: str, relation: str, obj: str) -> str:
    return f"{fill(RELATIONS[relation].template, subject)} {obj}."


def reference_texts(graph: KnowledgeGraph) -> dict[str, str]:
    """`{entity: text}`: the facts that name the entity, and the other facts of the subjects that share one with it."""
    about: dict[str, list[str]] = {}
    for (s, r), o in sorted(graph.facts.items()):
        for entity in (s, o):
            about.setdefault(entity, []).append(_sentence(s, r, o))
    texts = {}
    for entity, sentences in about.items():
        sharing = {s for (s, r), o in graph.facts.items() if o == entity}
        more = [_sentence(s, r, o) for (s, r), o in sorted(graph.facts.items()) if s in sharing and o != entity]
        texts[entity] = " ".join(dict.fromkeys(sentences + more))
    return texts


def _key(name: str) -> str:
    return name.strip().lower().removeprefix("the ")


@lru_cache(maxsize=1)
def _fitted():
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = reference_texts(knowledge_graph())
    vectorizer = TfidfVectorizer().fit(list(texts.values()))
    return vectorizer, {_key(e): vectorizer.transform([t]) for e, t in texts.items()}


def reference_score(generations: Sequence[str], answer: str) -> float | None:
    """Cosine of the TF-IDF vectors of `generations` (joined) and the reference text about `answer`
    (see the module doc); None when the graph has no text about it."""
    vectorizer, references = _fitted()
    reference = references.get(_key(answer))
    if reference is None:
        return None
    generated = vectorizer.transform([" ".join(generations)])
    return float((generated @ reference.T).toarray()[0, 0])  # both rows are L2-normalised: the dot is the cosine
