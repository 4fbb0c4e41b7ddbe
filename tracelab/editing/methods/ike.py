"""In-context knowledge editing, IKE (Zheng et al., EMNLP 2023): no weight changes.

    >>> tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
    ...         method="ike")                              # a PromptContext: every prompt asked after it
    >>> model.predict("The Eiffel Tower is located in the city of")   # asked through the context

The new fact and k demonstrations are placed before every prompt the model is asked
(`Model.query_text`). Demonstrations come from a pool of other edits
(`$TRACELAB_DATA/counterfact-train.json` by default — the training split, never the evaluated
records), three per pool record, the paper's three kinds:

    copy:    New Fact: {prompt} {new}\\nPrompt: {prompt} {new}
    update:  New Fact: {prompt} {new}\\nPrompt: {paraphrase} {new}
    retain:  New Fact: {prompt} {new}\\nPrompt: {neighbour prompt} {its answer}

and the k most similar to the new fact (TF-IDF cosine, scikit-learn) are kept, least similar
first, k = 16 by default, fewer when the context would not fit the model. The query is then
"...New Fact: {edit prompt} {target}\\nPrompt: {prompt}".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ...data import shared_data
from ...models import Model
from ..changes import Change, PromptContext
from ..registry import Context, Method, register
from ..requests import Request


@dataclass
class IKEParams:
    k: int = 16                      # demonstrations
    pool: str | None = None          # a CounterFact (EasyEdit flat) file; None: counterfact-train.json
    margin_tokens: int = 64          # room left in the context for the prompt and the answer

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"k (the number of demonstrations) must be an int >= 0, got {self.k!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _fact(prompt: str, target: str) -> str:
    return f"New Fact: {prompt} {target.strip()}\nPrompt: "


@lru_cache(maxsize=4)
def _pool(path: str, stamp: tuple) -> tuple[list[dict], list[str], object, object]:
    """The pool's records, demonstrations, and their TF-IDF vectors (cached per file version)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"the IKE pool {path} is not valid JSON: {e}") from e
    if not isinstance(records, list) or not records:
        raise ValueError(f"the IKE pool {path} holds no records (expected a list of CounterFact records)")
    demos, owners = [], []
    for i, r in enumerate(records):
        try:
            new, fact = r["target_new"], _fact(r["prompt"], r["target_new"])
            kinds = [f"{r['prompt']} {new}", f"{_first(r['rephrase_prompt'])} {new}",
                     f"{_first(r['locality_prompt'])} {_first(r['locality_ground_truth'])}"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"IKE pool record {i} of {path} lacks {e}: expected EasyEdit's flat CounterFact "
                             "(prompt, subject, target_new, rephrase_prompt, locality_prompt, "
                             "locality_ground_truth)") from e
        demos += [fact + k + "\n\n" for k in kinds]
        owners += [i] * 3
    vectorizer = TfidfVectorizer().fit(demos)
    return records, demos, owners, (vectorizer, vectorizer.transform(demos))


def _first(value):
    return value[0] if isinstance(value, list) else value


def demonstrations(model: Model, request: Request, params: IKEParams) -> str:
    """The k demonstrations most similar to the request's fact, least similar first; ValueError
    when the pool holds the request itself (leakage)."""
    path = Path(params.pool) if params.pool else shared_data("counterfact-train.json")
    stat = os.stat(path)
    records, demos, owners, (vectorizer, vectors) = _pool(str(path), (stat.st_mtime_ns, stat.st_size))
    leaked = [i for i, r in enumerate(records)
              if r.get("prompt") == request.text or (r.get("subject") == request.subject
                                                      and r.get("target_new") == request.target)]
    if leaked:
        raise ValueError(f"the IKE pool {path} contains the record being edited ({request.text!r} → "
                         f"{request.target!r}, pool record {leaked[0]}): demonstrations must come from other "
                         "edits (use the training split)")
    query = vectorizer.transform([_fact(request.text, request.target) + f"{request.text} {request.target}"])
    similarity = (vectors @ query.T).toarray()[:, 0]
    chosen = similarity.argsort()[::-1][:params.k][::-1]                  # top k, least similar first
    budget = getattr(model.hf.config, "max_position_embeddings", 2048) - params.margin_tokens
    picked = [demos[i] for i in chosen]
    while picked and len(model.tokenizer("".join(picked))["input_ids"]) > budget:
        picked = picked[1:]                                               # drop the least similar
    return "".join(picked)


@register
class IKE(Method):
    """IKE as a registered method: one `PromptContext` per edit."""

    name, title, family, Params, layers = "ike", "IKE", "in-context", IKEParams, "none"

    def apply(self, model: Model, requests: list[Request], layers: list[int], params: IKEParams,
              ctx: Context) -> list[Change]:
        (request,) = requests
        prefix = demonstrations(model, request, params) + _fact(request.text, request.target)
        ctx.info.update(context_tokens=len(model.tokenizer(prefix)["input_ids"]), parameters_changed=0)
        return [PromptContext(prefix)]
