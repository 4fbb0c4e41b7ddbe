"""How many row-positions a tracing batch may hold: from `max_batch_tokens`, or a memory budget.

    >>> batch_tokens(model, n_tokens=12, dtype=torch.bfloat16, max_batch_bytes=2 * 2**30)   # 2 GiB
"""

from __future__ import annotations

import torch

DEFAULT_BATCH_TOKENS = 16384


def bytes_per_row_position(model, n_tokens: int, dtype: torch.dtype) -> int:
    """Activation bytes one row-position of a batch holds while a decoder layer runs (an upper
    estimate): the residual, its normed copy, the attention and MLP outputs and one layer input
    kept for the walk (5·d_model), the MLP's up and gate projections (2·d_mlp), a row of
    attention scores (n_heads·n_tokens) and the keys/values it attends to (2·n_tokens·d_model),
    in the compute dtype (float32 for the scores). Weights and the clean/corrupted caches are
    not included: they do not grow with the batch."""
    cfg = model.hf.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    width = torch.empty((), dtype=dtype).element_size()
    return width * (5 * model.d_model + 2 * model.d_mlp + 2 * n_tokens * model.d_model) + 4 * heads * n_tokens


def check_budget(max_batch_tokens: int | None, max_batch_bytes: int | None) -> None:
    """ValueError unless at most one is given, as a positive int."""
    if max_batch_tokens is not None and max_batch_bytes is not None:
        raise ValueError("give max_batch_tokens or max_batch_bytes, not both")
    for name, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_bytes", max_batch_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def batch_tokens(model, n_tokens: int, dtype: torch.dtype, max_batch_tokens: int | None = None,
                 max_batch_bytes: int | None = None) -> int:
    """Row-positions per batch: `max_batch_tokens`, or as many as fit `max_batch_bytes` of
    activations (`bytes_per_row_position`); give one or neither (default 16384 row-positions).
    ValueError if the budget does not fit one row of the prompt."""
    check_budget(max_batch_tokens, max_batch_bytes)
    if max_batch_bytes is None:
        return max_batch_tokens or DEFAULT_BATCH_TOKENS
    per = bytes_per_row_position(model, n_tokens, dtype)
    if max_batch_bytes < per * n_tokens:
        raise ValueError(f"max_batch_bytes={max_batch_bytes} does not fit one row of this prompt "
                         f"({n_tokens} tokens × {per} bytes ≈ {per * n_tokens} bytes of activations)")
    return max_batch_bytes // per
