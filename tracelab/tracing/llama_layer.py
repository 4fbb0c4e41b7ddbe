"""One Llama-family decoder layer written out as its equations, for the tracing walk.

    >>> layers = LlamaLayers.build(model, torch.bfloat16, n_tokens=10)  # None: not a Llama-like block
    >>> out, (k, v) = layers[5](x, cos, sin, start=3, prefix=(k_prev, v_prev),
    ...                         restore={"mlp": (rows, clean_mlp_t)})

The walk of causal tracing runs thousands of restored rows through one layer at a time. Replaying
the transformers module costs more in glue than in math on a CPU (autocast casts of every
weight on every call, a flash-attention kernel built for long sequences, a hook per patched
site), so for the families whose layer is the plain pre-norm Llama block — Llama, Mistral,
Qwen2, Qwen3 (+ per-head q/k norms) — the layer is computed here from its weights, cast once:

    a = RMSNorm(x)                  q, k, v = a W_qkv (+ b)          q, k ← rope(q, k)
    attn = softmax(q kᵀ/√d_h + causal) v W_o      h = x + attn       (attn[t] ← clean, restored rows)
    mlp = (act(n W_gate) ⊙ n W_up) W_down,  n = RMSNorm(h)           out = h + mlp   (mlp[t] ← clean)

Shapes: x `[R, q, d_model]` (R rows, positions start..start+q-1), the residual stream kept in
float32 like transformers under autocast; matmuls in the compute dtype; norms and softmax in
float32. Grouped-query attention runs per key/value head without repeating the keys: the
query heads of one group are stacked on the position axis. Rotary `cos, sin` `[q, head_dim]`
come from the model's own forward (so every rope scaling variant is the model's). The cast
weights are a second copy of the model (in the compute dtype); `build` declines when that copy
would take more than a quarter of the free memory, and the walk replays the modules instead.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..kernels import restore_
from ..models.architectures import ARCHITECTURES
from ..models.wrappers import inner_module

# The families whose decoder layer is the plain pre-norm Llama block (model types from the registry)
LLAMA_LIKE = tuple(t for a in ARCHITECTURES if a.family in ("llama", "qwen") for t in a.model_types)

Restore = tuple[torch.Tensor, torch.Tensor]  # (rows bool [R], value [d_model] or [q, d_model]), see apply_restore


def _weights(*linears: nn.Linear, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`[in, out]` weight of the linears stacked on the output axis (contiguous), and their bias."""
    w = torch.cat([m.weight.detach() for m in linears]).to(dtype).T.contiguous()
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return w, None
    b = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                   for m in linears])
    return w, b.to(dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x @ w if b is None else torch.addmm(b, x.flatten(0, -2), w).view(*x.shape[:-1], -1)


def _rms(x: torch.Tensor, norm: nn.Module, dtype) -> torch.Tensor:
    """transformers' RMSNorm, x·w / √(mean(x²) + ε), in float32, rounded once to `dtype`."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    x = x.float()
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return torch.mul(x, scale).mul_(norm.weight.float()).to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁], for x `[..., head_dim]`, cos/sin
    broadcasting to it (three passes, no concatenation)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


def _softmax_(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · scores) over the last axis, in place. Written out: torch's softmax kernel
    is ~6× slower on rows of ~10 keys, which is all tracing has."""
    e = scores.sub_(scores.amax(-1, keepdim=True)).mul_(scale).exp_()
    return e.div_(e.sum(-1, keepdim=True))


class LlamaLayer:
    """Decoder layer `layer` of a Llama-like model with its weights cast to `dtype` (see module doc)."""

    def __init__(self, layer: nn.Module, config, dtype: torch.dtype):
        layer = inner_module(layer)  # a TransformerLens bridge wraps each part: read the transformers ones
        attn, mlp = inner_module(layer.self_attn), inner_module(layer.mlp)
        q, k, v, o = (inner_module(getattr(attn, f"{x}_proj")) for x in "qkvo")
        gate, up, down = (inner_module(getattr(mlp, f"{x}_proj")) for x in ("gate", "up", "down"))
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.w_qkv, self.b_qkv = _weights(q, k, v, dtype=dtype)
        self.w_o, self.b_o = _weights(o, dtype=dtype)
        self.w_gate, self.b_gate = _weights(gate, dtype=dtype)
        self.w_up, self.b_up = _weights(up, dtype=dtype)
        self.w_down, self.b_down = _weights(down, dtype=dtype)
        self.act = mlp.act_fn
        self.norm_in = inner_module(layer.input_layernorm)
        self.norm_post = inner_module(layer.post_attention_layernorm)
        self.q_norm, self.k_norm = (inner_module(getattr(attn, n)) if getattr(attn, n, None) is not None else None
                                    for n in ("q_norm", "k_norm"))  # Qwen3

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int,
                 prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
                 restore: dict[str, Restore] | None = None, last_only: bool = False, inplace: bool = False,
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x `[R, q, d]` float32 → (out `[R, q, d]` float32, new keys/values `[R, kv_heads, q, head_dim]`);
        `inplace`: x is the residual stream and is updated in place (out is x, no copy).
        `prefix`: keys/values of positions `< start` `[R, kv_heads, start, head_dim]`; `restore`:
        `{"attn" | "mlp": (rows, value)}` sets that sublayer's output of `rows` (`apply_restore`).
        `last_only`: only the last position's output is wanted (the last layer, under the LM head):
        keys/values at every position, the rest at the last; out is `x[:, -1:]`."""
        restore = restore or {}
        x = x if inplace else x.clone()
        R, q, _ = x.shape
        H, G, hd = self.heads, self.kv_heads, self.head_dim
        qkv = _linear(_rms(x, self.norm_in, self.dtype), self.w_qkv, self.b_qkv).view(R, q, H + 2 * G, hd)
        cos, sin = cos[:, None].to(self.dtype), sin[:, None].to(self.dtype)       # [q, 1, hd]
        if self.q_norm is None:  # rope on queries and keys in one pass
            queries_keys = _rope(qkv[:, :, :H + G], cos, sin)
        else:  # Qwen3: per-head RMSNorm of queries and keys first
            queries_keys = torch.cat([_rope(_rms(qkv[:, :, :H], self.q_norm, self.dtype), cos, sin),
                                      _rope(_rms(qkv[:, :, H:H + G], self.k_norm, self.dtype), cos, sin)], dim=2)
        queries, keys = queries_keys[:, :, :H], queries_keys[:, :, H:].transpose(1, 2)  # keys [R, G, q, hd]
        values = qkv[:, :, H + G:].transpose(1, 2)
        all_keys, all_values = keys, values
        if prefix is not None:
            all_keys = torch.cat([prefix[0].to(self.dtype), keys], dim=2)        # [R, G, n, hd]
            all_values = torch.cat([prefix[1].to(self.dtype), values], dim=2)
        n = all_keys.shape[2]
        if last_only:  # a restore at position 0 < q - 1 cannot reach the last position's output
            restore = {k: (rows, value[-1:] if value.dim() == 2 else value) for k, (rows, value) in restore.items()
                       if value.dim() == 2 or q == 1}
            queries, x, start, q = queries[:, -1:], x[:, -1:], n - 1, 1
        # queries of one kv group stacked on the position axis: [R, G, (H/G)·q, hd]
        grouped = rearrange(queries, "r q (g h) d -> r g (h q) d", g=G)
        scores = (grouped @ all_keys.transpose(-1, -2)).float()                  # [R, G, (H/G)·q, n]
        causal = torch.arange(n, device=x.device)[None, :] > start + torch.arange(q, device=x.device)[:, None]
        scores.view(R, G, H // G, q, n).masked_fill_(causal, float("-inf"))
        mixed = _softmax_(scores, self.scaling).to(self.dtype) @ all_values      # [R, G, (H/G)·q, hd]
        mixed = rearrange(mixed, "r g (h q) d -> r q (g h d)", q=q)
        attn = _linear(mixed, self.w_o, self.b_o)
        apply_restore(attn, restore.get("attn"))
        h = x.add_(attn)
        n_ = _rms(h, self.norm_post, self.dtype)
        gate = _linear(n_, self.w_gate, self.b_gate)
        gate = F.silu(gate, inplace=True) if isinstance(self.act, nn.SiLU) else self.act(gate)
        mlp = _linear(gate.mul_(_linear(n_, self.w_up, self.b_up)), self.w_down, self.b_down)
        apply_restore(mlp, restore.get("mlp"))
        return h.add_(mlp), (keys, values)


def apply_restore(out: torch.Tensor, restore: Restore | None) -> torch.Tensor:
    """A sublayer's output `[R, q, d]` with `rows` (bool `[R]`) set to `value`, in place: `[d]` at
    the first position (a restored token), `[q, d]` at every position. Through the tracing patch
    kernel (Triton on GPU, torch on CPU)."""
    if restore is not None:
        rows, value = restore
        value = value.to(out.dtype)
        at = out[:, :1] if value.dim() == 1 else out
        restore_(at, value.expand(at.shape[1:])[None], torch.where(rows, 0, -1)[:, None].expand(at.shape[:2]))
    return out


class LlamaLayers(list):
    """The `LlamaLayer`s of a model, and its final norm and LM head in the compute dtype."""

    @classmethod
    def build(cls, model, dtype: torch.dtype, n_tokens: int) -> "LlamaLayers | None":
        """All layers of `model` (a tracelab `Model`) cast to `dtype`, or None where the layer is
        not the plain Llama block (other families, a sliding window shorter than the prompt) or
        the cast copy would not fit comfortably (> 1/4 of the free memory)."""
        cfg = model.hf.config
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if (cfg.model_type not in LLAMA_LIKE or getattr(cfg, "pretraining_tp", 1) != 1
                or (window is not None and n_tokens > window)):
            return None
        copy_bytes = sum(p.numel() for p in model.hf.parameters()) * torch.empty((), dtype=dtype).element_size()
        if copy_bytes > _free_bytes(model.device) / 4:
            return None
        layers = cls(LlamaLayer(model.layer(l), cfg, dtype) for l in range(model.n_layers))
        layers.final_norm = model.module(model.arch.final_norm)
        head = inner_module(model.hf.get_output_embeddings())
        layers.w_head, layers.b_head = _weights(head, dtype=dtype)
        layers.dtype = dtype
        return layers

    def head(self, final: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on `[rows, d_model]` → logits `[rows, vocab]` in the compute dtype."""
        return _linear(_rms(final, self.final_norm, self.dtype), self.w_head, self.b_head)


def _free_bytes(device: torch.device) -> float:
    """Free memory on `device` (CUDA: the driver's count; CPU: Linux's MemAvailable, else free pages)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")
