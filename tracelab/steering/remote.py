"""Steering through nnsight: the same residual additions as `steer`, as one nnsight trace, so a
hosted model (NDIF, `remote=True`) can run them.

    >>> from nnsight import TransformersModel
    >>> lm = TransformersModel("meta-llama/Meta-Llama-3.1-70B", task="text-generation")  # NDIF_API_KEY set
    >>> logits = steered_next_token_logits(lm, prompts, v, alpha=4.0, remote=True)   # [batch, vocab]

In the trace, h_l ← h_l + Σ α·v_l at each steered layer's block output (every position, or the
last real token of each prompt with `positions="after_prompt"`). What is sent: the prompts'
token ids and attention mask, the summed steering vectors `[d_model]` per layer, and this
code; what comes back: the last-real-token logits `[batch, vocab]`. The API key is nnsight's
(`NDIF_API_KEY`); tracelab never reads it. Tested locally against `steer` (equal logits).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models.envoys import envoy, nnsight_model, site_tensor
from ..models.loading import as_model
from .apply import Steering, _deltas, _terms


def steered_next_token_logits(
    model, prompts: str | Sequence[str], vector: Steering, alpha: float = 1.0, *,
    layers: int | Sequence[int] | None = None, positions: str = "all", remote: bool = False,
) -> torch.Tensor:
    """Next-token logits `[batch, vocab]` (float32) of `prompts` with `vector` added at its
    layers, computed in one nnsight trace on `model` (an nnsight model, or any model tracelab
    takes, wrapped in `NNsight` here). `positions`: "all" or "after_prompt" (the last token)."""
    user_object, model = model, as_model(model)
    lm = nnsight_model(user_object, model.hf)
    if positions not in ("all", "after_prompt"):
        raise ValueError(f"positions must be 'all' or 'after_prompt' here, got {positions!r}")
    deltas = _deltas(model, _terms(vector, alpha), [layers] if isinstance(layers, int) else layers)
    batch = model.tokenize([prompts] if isinstance(prompts, str) else list(prompts))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, n = ids.shape
    last = mask.sum(1) - 1  # right padding: each row's last real token
    rows = torch.arange(B)
    with torch.no_grad(), lm.trace(input_ids=ids, attention_mask=mask, remote=remote):
        for l in sorted(deltas):
            h = site_tensor(envoy(lm, model.resid(l).module).output, B, n)
            if positions == "all":
                h += deltas[l].to(h.dtype)
            else:
                h[rows, last] += deltas[l].to(h.dtype)
        logits = lm.output.logits[rows, last].float().save()
    return logits.detach().cpu()
