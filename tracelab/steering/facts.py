"""Steering a fact instead of editing it, and choosing the layer from a trace or a reading.

    >>> r = tl.trace(model, "The Eiffel Tower is located in the city of", subject="The Eiffel Tower")
    >>> v = fact_vector(model, "The Eiffel Tower", "{} is located in the city of", "Rome",
    ...                 layer=choose_layer(r))
    >>> with steer(model, v, alpha=0.5):
    ...     model.predict("The Eiffel Tower is located in the city of")   # ' Rome' now leads (0.57)
"""

from __future__ import annotations

import os
from typing import Sequence

from tqdm.auto import tqdm

from .apply import steer
from .directions import caa
from .vector import SteeringVector


def fact_prompt(prompt: str, subject: str) -> str:
    """The prompt text: a template with `{}` gets the subject; a full prompt must contain it."""
    if "{}" in prompt:
        return prompt.format(subject)
    if subject not in prompt:
        raise ValueError(f"subject {subject!r} is not in prompt {prompt!r}: give a template with '{{}}' "
                         f"or a prompt that contains the subject")
    return prompt


def fact_vector(
    model, subject: str, prompt: str, target: str, *, layer: int | Sequence[int],
    target_true: str | None = None, paraphrases: Sequence[str] = (),
) -> SteeringVector:
    """CAA from the prompt completed with the new vs the old object.

        >>> v = fact_vector(model, "The Eiffel Tower", "{} is located in the city of", "Rome", layer=8)
        >>> v.meta["target_true"]                  # 'Paris' (the model's own answer when not given)

    v_l = mean over prompts p of h_l(p + target) − h_l(p + target_true) at the answer token.
    `target_true` defaults to the model's top-1 next token after the prompt; `paraphrases`
    (templates or full prompts) add pairs. Apply it with `positions="all"` (the default): the
    direction is mostly the answer token's identity, which the model copies from context; added
    only after the prompt it barely moves the answer. Small α (≈0.5) is enough; α ≥ 2 breaks
    the model. Being subject-agnostic, it also moves neighbouring facts (what an edit avoids).
    """
    texts = [fact_prompt(p, subject) for p in [prompt, *paraphrases]]
    if target_true is None:
        target_true = model.predict(texts[0], k=1)[0][0].strip()
    if target.strip() == target_true.strip():
        raise ValueError(f"target {target!r} is already the model's answer {target_true!r}: give a new object")
    pairs = [(t + " " + target.strip(), t + " " + target_true.strip()) for t in texts]
    vector = caa(model, pairs, layers=layer, source=f"fact: {subject}", progress=False)
    vector.method = "caa-fact"
    vector.meta.update(subject=subject, prompt=prompt, target=target, target_true=target_true)
    return vector


def evaluate_steering(
    model, records, *, layer: int, alpha: float = 0.5, limit: int | None = None, progress: bool = True,
):
    """Score fact steering with the same CounterFact metrics as an edit (`tracelab.evaluate`).

        >>> res = evaluate_steering(model, "counterfact-edit-sample.json", layer=6, alpha=0.5, limit=20)
        >>> print(res.table())                     # rome.efficacy_score, paraphrase, neighborhood, ...
        >>> tl.evaluate(model, path, "rome", limit=20, layer=6).table()    # the edit, side by side

    For each record, a `fact_vector` from its request (prompt completed with the new vs the true
    object; paraphrase and neighbour prompts are not used to build it) is applied at `layer`
    with `alpha` while `tracelab.evaluate` scores the record. Returns an `EvalResult`.
    """
    from ..evaluation import EvalResult, evaluate, read_records, to_record

    recs = read_records(records, limit) if isinstance(records, (str, os.PathLike)) else [to_record(r) for r in records][:limit]
    if not recs:
        raise ValueError("no records to evaluate")
    rows = []
    for rec in tqdm(recs, desc="evaluate (steer)", disable=not progress):
        r = rec.request
        vector = fact_vector(model, r.subject, r.prompt, r.target, target_true=r.target_true, layer=layer)
        rows += evaluate(model, [rec], lambda: steer(model, vector, alpha), progress=False).rows
    return EvalResult(rows, {"model": model.name, "intervention": "steer", "method": "caa-fact", "layer": layer,
                             "alpha": alpha, "positions": "all", "records": len(recs)})


def choose_layer(source, kind: str = "mlp") -> int:
    """The layer to steer at, from a `TraceResult` (its `peak(kind)`, the layer with the largest
    indirect effect at the last subject token) or from a vector with reading accuracy (its best
    held-out layer).

        >>> choose_layer(tl.trace(model, prompt, subject=subject))   # e.g. 4
        >>> choose_layer(tl.repe(model, pairs))                       # e.g. 12
    """
    if isinstance(source, SteeringVector):
        return source.best_layer()
    if hasattr(source, "peak"):
        return int(source.peak(kind))
    raise TypeError(f"choose_layer needs a TraceResult or a SteeringVector with reading accuracy, "
                    f"got {type(source).__name__}")
