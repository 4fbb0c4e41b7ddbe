"""Text in and out of a model: padded batches, generation, teacher-forced target scores, perplexity.

    >>> batch = padded(model, ["a prompt", "a longer prompt"], side="left")   # input_ids, attention_mask
    >>> batch, new = generate(model, ["I thought the movie was"], 5)         # greedy, new ids [1, 5]
    >>> rows = target_log_probs(model, ["The Eiffel Tower is in"], ["Paris"])
    >>> rows[0].shape                                                        # [n_target_tokens, vocab]

Each is written once here; `Model.tokenize / generate / target_log_probs` call them. They read
the prompts as given: `Model.query_text` is the caller's choice.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import prompts as prompt_tools


def padded(model, texts: Sequence[str], *, side: str = "right", max_length: int | None = None
           ) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` `[batch, pos]` on the model's device, padded on `side`
    (left for generation, which continues from the last position); the tokenizer's padding side
    is restored afterwards. `max_length` truncates."""
    tok = model.tokenizer
    old = tok.padding_side
    tok.padding_side = side
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, truncation=max_length is not None,
                  max_length=max_length)
    finally:
        tok.padding_side = old
    return {k: enc[k].to(model.device) for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def generate(model, texts: Sequence[str], max_new_tokens: int, *, seed: int = 0, **options
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Continue `texts` with whatever hooks are active: `(batch, new_ids)`; `batch` is the
    left-padded prompts, `new_ids` `[batch, max_new_tokens]` (pad ids after an end of text).
    `options` go to transformers' `generate` as given (`do_sample=True, top_k=5`, ...); with
    none it is greedy. Sampling is seeded without touching the global RNG."""
    batch = padded(model, texts, side="left")
    options.setdefault("do_sample", False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with model.native():
            out = model.hf.generate(**batch, max_new_tokens=max_new_tokens,
                                    pad_token_id=model.tokenizer.pad_token_id, **options)
    return batch, out[:, batch["input_ids"].shape[1]:]


@torch.no_grad()
def target_log_probs(model, texts: Sequence[str], targets: Sequence[str], batch_size: int = 32
                     ) -> list[tuple[torch.Tensor, list[int]]]:
    """Teacher-forced: for each (text, target), the log-softmax rows at the target's positions
    `[n_target_tokens, vocab]` (float32) and the target's token ids. Right-padded batches of
    `batch_size` (a single pair runs unpadded)."""
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} prompts but {len(targets)} targets")
    pad = model.tokenizer.pad_token_id
    out = []
    for i in range(0, len(texts), batch_size):
        rows = []
        for text, target in zip(texts[i:i + batch_size], targets[i:i + batch_size]):
            ids, tgt = model.tokenizer(text)["input_ids"], prompt_tools.target_ids(model.tokenizer, text, target)
            rows.append((ids + tgt, len(ids), tgt))
        width = max(len(r[0]) for r in rows)
        ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows], device=model.device)
        with model.native():
            logits = model.hf(input_ids=ids, attention_mask=mask).logits
        for j, (_, n, tgt) in enumerate(rows):
            out.append((logits[j, n - 1:n - 1 + len(tgt)].float().log_softmax(-1), tgt))
    return out


@torch.no_grad()
def perplexity(model, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 256) -> float:
    """exp(mean NLL per predicted token) over `texts` (each truncated to `max_length` tokens),
    with whatever hooks are active: the model-health figure of a stream of edits.

        >>> perplexity(model, ["A dog is a domesticated descendant of the wolf."])   # ≈ 20
    """
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = padded(model, texts[i:i + batch_size], max_length=max_length)
        with model.native():
            logits = model.hf(**batch).logits[:, :-1].float()
        ids, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")   # [batch, pos-1]
        total, count = total + float(nll[mask].sum()), count + int(mask.sum())
    if count == 0:
        raise ValueError("perplexity needs texts of at least two tokens")
    return float(torch.exp(torch.tensor(total / count)))
