"""Evaluation records from CounterFact (ROME's nested format or EasyEdit's flat one), zsRE and
known facts (known_1000's shape).

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


@dataclass
class Record:
    """One evaluation case: the edit request, and prompts that test it.

        >>> Record(Request("Lyon", "{} is in", "Italy", target_true="France"),
        ...        paraphrases=["Lyon, a city of"], neighbours=[("Paris is in", "France")])

    `paraphrases`: prompts that should now give `request.target`. `neighbours`: `(prompt,
    answer)` pairs about other subjects that should keep `answer` (CounterFact's neighbourhood
    prompts keep the old true answer). `generation_prompts`: for the fluency (n-gram entropy) test.
    """

    request: Request
    paraphrases: list[str] = field(default_factory=list)
    neighbours: list[tuple[str, str]] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    case_id: Any = None
    format: str = "counterfact"  # the shape it was read from: counterfact, zsre or known (its suite)

    def to_dict(self) -> dict:
        return asdict(self)


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
    if "subject" in item and "target" in item:  # tracelab's own request dicts
        return Record(Request.from_text(item["prompt"], item["subject"], item["target"], item.get("target_true")),
                      _as_list(item.get("paraphrases")), [tuple(n) for n in _as_list(item.get("neighbours"))])
    raise UnknownShape(
        f"unrecognised evaluation record with keys {sorted(item)}: expected CounterFact "
        "('requested_rewrite', ...), EasyEdit ('prompt', 'subject', 'target_new', 'ground_truth', "
        "'rephrase_prompt', 'locality_prompt', 'locality_ground_truth'), zsRE ('src', 'alt', 'answers', ...) "
        "or known facts ('subject', 'attribute', 'prompt')"
    )


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
