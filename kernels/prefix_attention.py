"""Attention for a batch of runs that share a prefix: restored runs over one corrupted prefix.

    >>> import torch
    >>> from tracelab.kernels import shared_prefix_attention
    >>> B, H, Tq, P, Dh = 8, 4, 3, 10, 16
    >>> q = torch.randn(B, H, Tq, Dh)
    >>> kp, vp = torch.randn(2, H, P, Dh)                 # the prefix, once for all rows
    >>> ks, vs = torch.randn(2, B, H, Tq, Dh)             # each row's own positions >= t
    >>> shared_prefix_attention(q, kp, vp, ks, vs).shape
    torch.Size([8, 4, 3, 16])

Each query i of row b attends to all P prefix keys and to its row's suffix keys j <= i; this
equals causal attention over ``cat([prefix, suffix])`` with the prefix repeated for every row.

Cascade, as in FlashInfer's cascade inference: the Triton path first attends all B·Tq queries
(of every row, and every query head of a key/value head) to the prefix together, so each prefix
K/V block is read once per 64 queries instead of once per row and head, keeping the float32
partial output and log-sum-exp; then a causal flash-attention pass over each row's suffix starts
from those partials, which merges the two softmaxes exactly. Grouped-query attention: H query heads
share H / Hkv key/value heads (head h reads kv head h // (H / Hkv)).

When it is worth it: when the prefix is long and the batch of rows sharing it is large (tracing
restores every layer and token of a prompt, so B is tens to hundreds): reading the prefix is then
most of the memory traffic of attention and falls by about the factor B·(H/Hkv)·Tq / 64. For a few
rows or a short prefix, plain ``scaled_dot_product_attention`` on the concatenated cache is as
fast. Not covered: attention biases (ALiBi), sliding windows, logit soft-capping — the caller keeps
the model's own attention for those. Positional rotations are applied to q/k before the call.
"""

from __future__ import annotations

import torch

from .checks import FLOATS, check_shape, check_tensor
from .dispatch import Backend, kernels, resolve_backend


def shared_prefix_attention(q: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                            k_suffix: torch.Tensor, v_suffix: torch.Tensor, *, scale: float | None = None,
                            backend: Backend = "auto") -> torch.Tensor:
    """softmax(q·kᵀ·scale) v over the shared prefix and the causal suffix; returns [B, H, Tq, Dh].

        >>> q, ks, vs = torch.randn(3, 2, 4, 5, 16)       # B=2, H=4, Tq=5, Dh=16
        >>> kp, vp = torch.randn(2, 4, 7, 16)             # P=7
        >>> shared_prefix_attention(q, kp, vp, ks, vs, scale=0.25).shape
        torch.Size([2, 4, 5, 16])

    Shapes: q [B, H, Tq, Dh]; k_prefix, v_prefix [Hkv, P, Dh] (P may be 0); k_suffix, v_suffix
    [B, Hkv, Tq, Dh]; H a multiple of Hkv; one dtype (float16/bfloat16/float32) and device for all.
    ``scale`` defaults to Dh ** -0.5. Scores, softmax and sums are float32; the output is q's dtype.
    """
    check_tensor("q", q, ndim=(4,), dtypes=FLOATS, shape="[B, H, Tq, Dh]")
    B, H, Tq, Dh = q.shape
    for name, t in (("k_prefix", k_prefix), ("v_prefix", v_prefix)):
        check_tensor(name, t, ndim=(3,), dtypes=(q.dtype,), shape="[Hkv, P, Dh]", device=q.device)
    Hkv, P = k_prefix.shape[:2]
    for name, t in (("k_prefix", k_prefix), ("v_prefix", v_prefix)):
        check_shape(name, t, (Hkv, P, Dh), "[Hkv, P, Dh] with Dh = q.shape[3]")
    for name, t in (("k_suffix", k_suffix), ("v_suffix", v_suffix)):
        check_tensor(name, t, ndim=(4,), dtypes=(q.dtype,), shape="[B, Hkv, Tq, Dh]", device=q.device)
        check_shape(name, t, (B, Hkv, Tq, Dh), "[B, Hkv, Tq, Dh] with B, Tq, Dh from q, Hkv from k_prefix")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"the {H} query heads must share key/value heads evenly; got Hkv = {Hkv} "
                         "(k_prefix.shape[0]). Hkv must divide H (Hkv = H without grouped-query attention)")
    scale = Dh ** -0.5 if scale is None else float(scale)
    if q.numel() == 0:
        return torch.empty_like(q)
    if resolve_backend(backend, q) == "triton":
        return kernels().shared_prefix_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, scale)
    return _torch_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, scale)


def _torch_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, scale: float) -> torch.Tensor:
    # The same cascade in torch, in float32: prefix scores from one batched product (the prefix is
    # never repeated per row), one softmax over [prefix | causal suffix] scores.
    B, H, Tq, Dh = q.shape
    Hkv, P, _ = k_prefix.shape
    qg = q.float().reshape(B, Hkv, H // Hkv, Tq, Dh)  # [batch, kv head, head in group, query, dh]
    s_pre = torch.einsum("bkgqd,kpd->bkgqp", qg, k_prefix.float())
    s_suf = torch.einsum("bkgqd,bkjd->bkgqj", qg, k_suffix.float())
    causal = torch.ones(Tq, Tq, dtype=torch.bool, device=q.device).tril()
    s_suf = s_suf.masked_fill(~causal, float("-inf"))
    p = (torch.cat([s_pre, s_suf], dim=-1) * scale).softmax(dim=-1)
    out = torch.einsum("bkgqp,kpd->bkgqd", p[..., :P], v_prefix.float())
    out += torch.einsum("bkgqj,bkjd->bkgqd", p[..., P:], v_suffix.float())
    return out.reshape(B, H, Tq, Dh).to(q.dtype)
