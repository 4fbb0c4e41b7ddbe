"""Evaluation records from CounterFact (ROME's nested format or EasyEdit's flat one), zsRE, known
facts (known_1000's shape), MQuAKE and RippleEdits (their release format or EasyEdit's flat one).

    >>> records = read_records("../shared/data/counterfact-edit-sample.json", limit=100)
    >>> r = records[0]
    >>> r.request.text, r.request.target, r.paraphrases[:1], r.neighbours[:1]
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..editing.requests import Request
from .graph import Probe


@dataclass
class Record:
    """One evaluation case: the edit request, and prompts that test it.

        >>> Record(Request("Lyon", "{} is in", "Italy", target_true="France"),
        ...        paraphrases=["Lyon, a city of"], neighbours=[("Paris is in", "France")])

    `paraphrases`: prompts that should now give `request.target`. `neighbours`: `(prompt,
    answer)` pairs about other subjects that should keep `answer` (CounterFact's neighbourhood
    prompts keep the old true answer). `generation_prompts`: for the fluency (n-gram entropy) test.
    `probes`: the edit's ripple effects and multi-hop questions (`graph.Probe`). `more`: further
    edits made together with `request` (an MQuAKE case rewrites up to four facts).
    """

    request: Request
    paraphrases: list[str] = field(default_factory=list)
    neighbours: list[tuple[str, str]] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    case_id: Any = None
    format: str = "counterfact"  # the shape it was read from: counterfact, zsre, known, mquake, ripple
    probes: list[Probe] = field(default_factory=list)
    more: list[Request] = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        """Every edit of the case: `request`, then `more`."""
        return [self.request, *self.more]

    def to_dict(self) -> dict:
        return asdict(self)


def as_question(text: str) -> str:
    """A cloze or a question asked as a question: "Question: {text} what?\nAnswer:" (a question keeps its "?")."""
    asked = text if text.rstrip().endswith("?") else f"{text.rstrip()} what?"
    return f"Question: {asked}\nAnswer:"


def _str(value) -> str | None:
    if isinstance(value, Mapping):
        return value.get("str")
    if isinstance(value, list):
        return _str(value[0]) if value else None
    return value


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class UnusableRecord(ValueError):
    """A record in a known shape whose values cannot make an edit (e.g. an empty new answer)."""


class UnknownShape(ValueError):
    """A record in none of the shapes `to_record` reads."""


def to_record(item: Mapping[str, Any] | Record | Request) -> Record:
    """A `Record` from one item in any supported shape (see `read_records`); `UnusableRecord` when
    the shape is known but a value is not (an empty target), ValueError when the shape is unknown."""
    if isinstance(item, Mapping):
        try:
            return _to_record(item)
        except UnknownShape:
            raise
        except ValueError as e:
            raise UnusableRecord(f"record {item.get('case_id', item.get('subject'))!r}: {e}") from e
    return _to_record(item)


def _to_record(item) -> Record:
    if isinstance(item, Record):
        return item
    if isinstance(item, Request):
        return Record(item)
    if not isinstance(item, Mapping):
        raise TypeError(f"an evaluation record must be a dict, got {type(item).__name__} {item!r}")
    if isinstance(item.get("requested_rewrite"), list) and "questions" in item:
        return _mquake(item)
    if isinstance(item.get("edit"), Mapping) and "original_fact" in item["edit"] or "Compositionality_I" in item:
        return _ripple(item)
    if "requested_rewrite" in item:  # CounterFact, ROME's nested format
        rw = item["requested_rewrite"]
        request = Request.from_text(rw["prompt"], rw["subject"], _str(rw["target_new"]), _str(rw["target_true"]))
        true = request.target_true
        return Record(request, _as_list(item.get("paraphrase_prompts")),
                      [(p, true) for p in _as_list(item.get("neighborhood_prompts"))],
                      _as_list(item.get("generation_prompts")), item.get("case_id"))
    if "src" in item and "alt" in item:  # zsRE (MEND/ROME/EasyEdit)
        question = item["src"]
        prompt = question if question.rstrip().endswith("?") else question + "?"
        request = Request.from_text(prompt, item["subject"], item["alt"], _str(item.get("answers")))
        loc = [(item["loc"].removeprefix("nq question: "), item["loc_ans"])] if item.get("loc") else []
        return Record(request, _as_list(item.get("rephrase")), loc, [], item.get("case_id"), "zsre")
    if "target_new" in item and "prompt" in item:  # CounterFact, EasyEdit's flat format
        request = Request.from_text(item["prompt"], item["subject"], _str(item["target_new"]),
                                    _str(item.get("ground_truth")))
        loc_prompts = _as_list(item.get("locality_prompt"))
        loc_answers = _as_list(item.get("locality_ground_truth"))
        if len(loc_answers) == 1 and len(loc_prompts) > 1:
            loc_answers = loc_answers * len(loc_prompts)
        return Record(request, _as_list(item.get("rephrase_prompt")), list(zip(loc_prompts, map(_str, loc_answers))),
                      [], item.get("case_id"))
    if "attribute" in item and "subject" in item and "prompt" in item:  # known_1000 / built-in facts
        request = Request.from_text(item["prompt"], item["subject"], item["attribute"])
        return Record(request, case_id=item.get("known_id"), format="known")
    if "subject" in item and "target" in item:  # tracelab's own request dicts (the knowledge graph's edits)
        return Record(Request.from_text(item["prompt"], item["subject"], item["target"], item.get("target_true")),
                      _as_list(item.get("paraphrases")), [tuple(n) for n in _as_list(item.get("neighbours"))],
                      case_id=item.get("case_id"), probes=[Probe.from_dict(p) for p in _as_list(item.get("probes"))],
                      format="portability" if item.get("probes") else "counterfact")
    raise UnknownShape(
        f"unrecognised evaluation record with keys {sorted(item)}: expected CounterFact "
        "('requested_rewrite', ...), EasyEdit ('prompt', 'subject', 'target_new', 'ground_truth', "
        "'rephrase_prompt', 'locality_prompt', 'locality_ground_truth'), zsRE ('src', 'alt', 'answers', ...) "
        "known facts ('subject', 'attribute', 'prompt'), MQuAKE ('requested_rewrite' as a list, 'questions', ...) "
        "or RippleEdits ('edit' with 'original_fact', or 'Compositionality_I', ...)"
    )


MAX_ALIASES = 5  # answers scored per probe: the answer and at most this many aliases


def _answers(value, aliases=()) -> tuple[str, ...]:
    names = [n for n in [value, *aliases] if isinstance(n, str) and n.strip()]
    return tuple(dict.fromkeys(names))[:1 + MAX_ALIASES]


def _mquake(item: Mapping) -> Record:
    """MQuAKE (Zhong et al. 2023): up to four rewrites and three phrasings of one multi-hop question,
    whose answer must follow the rewrites; the unedited model must know every single hop and the question."""
    rewrites = [Request(rw["subject"], rw["prompt"], _str(rw["target_new"]), _str(rw.get("target_true")))
                for rw in item["requested_rewrite"]]
    if not rewrites:
        raise ValueError("an MQuAKE record needs at least one 'requested_rewrite'")
    hops = _as_list(item.get("single_hops"))
    known = tuple((h["cloze"], _answers(h["answer"], h.get("answer_alias", ()))) for h in hops)
    new, old = _answers(item["new_answer"], item.get("new_answer_alias", ())), _answers(item["answer"], item.get("answer_alias", ()))
    category = f"multi_hop_{min(max(len(hops), 2), 4)}"
    probes = [Probe(category, as_question(q), new, old, ((as_question(q), old), *known), len(hops))
              for q in _as_list(item["questions"])]
    return Record(rewrites[0], case_id=item.get("case_id"), format="mquake", probes=probes, more=rewrites[1:])


RIPPLE_CATEGORIES = {"Logical_Generalization": "logical_generalization", "Compositionality_I": "compositionality_1",
                     "Compositionality_II": "compositionality_2", "Subject_Aliasing": "subject_aliasing",
                     "Relation_Specificity": "relation_specificity", "Forgetfulness": "forgetfulness"}


def _ripple(item: Mapping) -> Record:
    """RippleEdits (Cohen et al. 2024), its release format (an `edit` with its `original_fact`, tests with
    `test_queries` and `condition_queries`) or EasyEdit's flat one (`prompt`, `subject`, `target_new`,
    tests `{prompt, targets}`: no conditions, so nothing is dropped). Every test query is one probe;
    the unedited model must give the answers of the test's condition queries, and, for the categories
    that should stay (relation specificity, forgetfulness), the query's own answer."""
    if "edit" in item:
        edit, original = item["edit"], item["edit"]["original_fact"]
        cloze, new, true = _split_fact(edit["prompt"], original["prompt"])
        subject = item.get("subject") or edit.get("subject") or _ripple_subject(item, cloze)
        request = Request.from_text(cloze, subject, new, true)
    else:
        request = Request.from_text(item["prompt"], item["subject"], _str(item["target_new"]), _str(item.get("ground_truth")))
    probes = []
    for key, category in RIPPLE_CATEGORIES.items():
        stays = category in ("relation_specificity", "forgetfulness")
        for test in _as_list(item.get(key)):
            if "test_queries" not in test:  # EasyEdit's flat test
                targets = [t for t in _as_list(test.get("targets")) if t]
                answers = _answers(targets[0], targets[1:]) if targets else ()
                if answers:
                    probes.append(Probe(category, test["prompt"], answers, answers if stays else None,
                                        ((test["prompt"], answers),) if stays else ()))
                continue
            conditions = tuple((q["prompt"], a) for q in _as_list(test.get("condition_queries"))
                               if (a := _query_answers(q)))
            for q in test["test_queries"]:
                answers = _query_answers(q)
                if answers:
                    own = ((q["prompt"], answers),) if stays else ()
                    probes.append(Probe(category, q["prompt"], answers, answers if stays else None, (*conditions, *own)))
    return Record(request, case_id=item.get("case_id", item.get("example_type")), format="ripple", probes=probes)


def _query_answers(query: Mapping) -> tuple[str, ...]:
    found = [(a.get("value"), a.get("aliases", ())) for a in _as_list(query.get("answers")) if a.get("value")]
    return _answers(found[0][0], [*found[0][1], *(v for v, _ in found[1:])]) if found else ()


def _split_fact(new_sentence: str, old_sentence: str) -> tuple[str, str, str]:
    """RippleEdits' edit and original fact as full sentences → (cloze, new answer, old answer)."""
    n = 0
    while n < min(len(new_sentence), len(old_sentence)) and new_sentence[n] == old_sentence[n]:
        n += 1
    n = new_sentence.rfind(" ", 0, n + 1)  # back to a word boundary: "Sweden" and "Switzerland" share "S"
    if n <= 0:
        raise ValueError(f"cannot split the edit {new_sentence!r} from its original fact {old_sentence!r}")
    cut = lambda s: s[n:].strip().rstrip(".").strip()  # noqa: E731
    return new_sentence[:n].rstrip(), cut(new_sentence), cut(old_sentence)


def _ripple_subject(item: Mapping, cloze: str) -> str:
    """The subject's name, which the release format does not label: the longest run of words the
    cloze shares with every other query about the same subject (or, failing that, with one), without
    the relation's words around it."""
    sid = item["edit"].get("subject_id")
    others = [f" {q['prompt']} " for key in RIPPLE_CATEGORIES for test in _as_list(item.get(key))
              for q in _as_list(test.get("test_queries")) if q.get("subject_id") == sid and q["prompt"] != cloze]
    words = cloze.split()
    runs = sorted({" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}, key=len,
                  reverse=True)
    best = next((r for r in runs if others and all(f" {r} " in o for o in others)), None) or \
        next((r for r in runs if any(f" {r} " in o for o in others)), "")
    stop = {"the", "of", "is", "was", "name", "are", "in"}
    parts = best.split()
    while parts and parts[0].lower() in stop:
        parts.pop(0)
    while parts and parts[-1].lower() in stop:
        parts.pop()
    if not parts:
        raise ValueError("the RippleEdits record names no subject ('subject') and none could be found in its queries")
    return " ".join(parts)


def read_records(source: str | Path | Iterable[Mapping], limit: int | None = None) -> list[Record]:
    """Records from a JSON file (a list), a JSONL file, or a list of dicts; the first `limit`.

        >>> read_records("counterfact.json", limit=10)         # nested or flat CounterFact, or zsRE
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no records file at {path}")
        text = path.read_text(encoding="utf-8")
        try:
            items = [json.loads(l) for l in text.splitlines() if l.strip()] if path.suffix == ".jsonl" else json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid {'JSON lines' if path.suffix == '.jsonl' else 'JSON'}: {e} "
                             "(expected a list of CounterFact, zsRE or known-facts records)") from e
    else:
        items = list(source)
    if not isinstance(items, list):
        raise ValueError(f"expected a list of records, got {type(items).__name__}")
    items = items[:limit] if limit is not None else items
    records, unusable = [], []
    for item in items:
        try:
            records.append(to_record(item))
        except UnusableRecord as e:
            unusable.append(str(e))
    if unusable:  # real datasets hold a few (zsRE's MEND release has an empty new answer)
        warnings.warn(f"skipped {len(unusable)} record(s) that cannot be edits, e.g. {unusable[0]}", stacklevel=2)
    return records
