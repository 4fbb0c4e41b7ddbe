"""Teacher-forced answers, what the learned editors train and validate on (and T-Patcher checks).

    >>> ids, mask, spans = target_batch(model, [request])                    # a Request's prompt + target
    >>> ids, mask, spans = answer_batch(model, [("The Eiffel Tower is in", "Paris")])
    >>> row_nll(model.hf(input_ids=ids, attention_mask=mask).logits, spans)   # [1], nats per answer token
    >>> token_accuracy(greedy_answers(model, ids, mask, spans)[0], spans[0][1])

`spans` is, per row, `(prompt length, answer token ids)`; rows are right-padded.
A training record offers its edit (`record.request`), a `paraphrase` and a `locality_pair`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch

from ...models import Model
from ..requests import Request


def target_batch(model: Model, requests: Sequence[Request]):
    """Right-padded prompt + target ids `[n, pos]`, the mask, and per request (prompt length, target ids)."""
    pad = model.tokenizer.pad_token_id
    rows = []
    for r in requests:
        prompt, target = model.tokenizer(r.text)["input_ids"], model.target_ids(r.text, r.target)
        rows.append((prompt + target, len(prompt), target))
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in rows], device=model.device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows], device=model.device)
    return ids, mask, [(n, t) for _, n, t in rows]


def answer_batch(model: Model, pairs: list[tuple[str, str]]):
    """`target_batch` of `(prompt, answer)` pairs."""
    return target_batch(model, [SimpleNamespace(text=t, target=a) for t, a in pairs])


def row_nll(logits: torch.Tensor, spans) -> torch.Tensor:
    """Per row, the mean NLL of its answer tokens `[R]` (teacher forced)."""
    out = []
    for r, (n, target) in enumerate(spans):
        rows = logits[r, n - 1:n - 1 + len(target)].float().log_softmax(-1)
        out.append(-rows[torch.arange(len(target)), torch.tensor(target, device=rows.device)].mean())
    return torch.stack(out)


def greedy_answers(model: Model, ids, mask, spans) -> list[list[int]]:
    """Per row, the greedy token at each answer position (teacher forced), with whatever hooks are active."""
    with model.native():
        logits = model.hf(input_ids=ids, attention_mask=mask).logits
    return [logits[r, n - 1:n - 1 + len(t)].argmax(-1).tolist() for r, (n, t) in enumerate(spans)]


def token_accuracy(got: list[int], want: list[int]) -> float:
    """The share of `want`'s tokens that `got` matches, position by position (EasyEdit's)."""
    return sum(int(a == b) for a, b in zip(got, want)) / max(1, len(want))


def paraphrase(record) -> str:
    """The record's first paraphrase, or its prompt when it has none."""
    return record.paraphrases[0] if record.paraphrases else record.request.text


def locality_pair(record) -> tuple[str, str]:
    """The record's first `(locality prompt, answer)`; ValueError when it has none."""
    if not record.neighbours:
        raise ValueError(f"record {record.request.text!r} has no locality prompt (neighbours): the learned editors "
                         "train and validate with one per edit")
    return record.neighbours[0]
