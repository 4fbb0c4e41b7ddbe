"""Walk the decoder yourself, one layer at a time, on the positions that can change.

    >>> walker = Walker(model, ids)                      # one clean forward: records each layer's call
    >>> h, (k, v) = walker.run(5, h, start=3, prefix=(k_prev, v_prev))
    >>> logits = walker.head(h[:, -1])                   # [rows, vocab]

`Walker` runs decoder layer `l` on hidden states of positions `start..n-1` `[rows, n - start,
d_model]`, attending to a key/value prefix for positions `< start` `[rows, kv_heads, start,
head_dim]` (the corrupted run's, in causal tracing). It stays generic over families by replaying
the arguments the model itself passed to each layer in a clean forward (captured with a
pre-hook), cut to the walked positions: rotary `position_embeddings` (Llama-like, NeoX, Gemma 3
per layer type), `position_ids` (GPT-J), the layer's attention mask (sliding windows included),
and a small cache object that prepends the prefix to the layer's new keys/values. GPT-2 and OPT
add positions at the embedding, so their layers need nothing more. Works for all of
`TINY_FAMILIES` (tested against the model's own forward).

For Llama-like families the layers run as written-out equations instead (`LlamaLayers`: weights
cast once to the compute dtype, grouped-query attention over the prefix, restores as arguments),
which is the same function with far less glue; `lean=False` keeps the replay for every family.
Restores are `{"attn" | "mlp": (rows bool [rows], value)}`: that sublayer's output of `rows`
becomes `value`, `[d_model]` at the first walked position or `[positions, d_model]` at all.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..models.hooks import intervene
from .llama_layer import LlamaLayers, Restore, apply_restore
from ..models.wrappers import forward_signature, layer_takes_named_arguments

_CACHE_ARGS = ("past_key_values", "layer_past", "cache")  # "cache": transformers ≥ 5.24


def unwalkable_layer(model) -> str | None:
    """None when every decoder layer's forward names its parameters, so its calls can be replayed
    (the transformers layers beneath nnsight and TransformerLens wrappers do; see
    `models.wrappers`); else the class of the first layer that does not, as `module.Class`."""
    for l in range(model.n_layers):
        layer = model.layer(l)
        if not layer_takes_named_arguments(layer):
            return f"{type(layer).__module__}.{type(layer).__qualname__}"
    return None


class _Prefix:
    """Stands in for a transformers Cache in one layer call: `update` prepends the prefix keys
    and values `[rows, kv_heads, start, head_dim]` and keeps the new ones (`new`)."""

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor] | None):
        self.prefix, self.new = prefix, None

    def update(self, key, value, *args, **kwargs):  # layer_idx, cache_kwargs / kwargs: unused
        self.new = (key, value)
        if self.prefix is None:
            return key, value
        pk, pv = self.prefix
        return torch.cat([pk.to(key.dtype), key], dim=-2), torch.cat([pv.to(value.dtype), value], dim=-2)


class _Stop(Exception):
    pass


class Walker:
    """Run single decoder layers of `model` for the prompt `ids` `[1, pos]` (see module doc).

        >>> walker = Walker(model, ids)
        >>> walker.clean_input.shape                     # [1, pos, d_model]: input of layer 0
        >>> h, kv = walker.run(0, walker.clean_input, start=0)
    """

    def __init__(self, model, ids: torch.Tensor, lean: bool = True):
        if ids.shape[0] != 1:
            raise ValueError(f"Walker takes one prompt, ids [1, pos]; got {tuple(ids.shape)}")
        self.model, self.n = model, ids.shape[1]
        self.layers: list[nn.Module] = [model.layer(l) for l in range(model.n_layers)]
        self.calls: list[dict] = [None] * model.n_layers
        self._signatures = [forward_signature(layer) for layer in self.layers]
        handles = [layer.register_forward_pre_hook(self._capture(l), with_kwargs=True)
                   for l, layer in enumerate(self.layers)]
        try:
            with torch.no_grad(), model.native():
                model.hf(input_ids=ids, use_cache=True)
        finally:
            for handle in handles:
                handle.remove()
        self.clean_input = self.calls[0].pop("_hidden")
        for call in self.calls[1:]:
            call.pop("_hidden")
        self.lean = LlamaLayers.build(model, compute_dtype(model), self.n) if lean else None

    def input_of(self, ids: torch.Tensor, embed_fn=None) -> torch.Tensor:
        """Input of layer 0 `[batch, pos, d_model]` for `ids` (positions added, embeddings scaled, as
        the model does), with `embed_fn` patching the `embed` site (corruption noise). Runs no layer."""
        got = []

        def stop(module, args, kwargs):
            got.append(args[0] if args else kwargs[self.calls[0]["_first"]])
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            with torch.no_grad(), intervene(self.model, {self.model.embed: embed_fn} if embed_fn else {}):
                self.model.hf(input_ids=ids)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got[0]

    def _capture(self, l: int):
        def hook(module, args, kwargs):
            bound = self._signatures[l].bind(*args, **kwargs).arguments
            params = self._signatures[l].parameters
            call = {}
            for name, value in bound.items():
                if params[name].kind is inspect.Parameter.VAR_KEYWORD:
                    call.update(value)
                elif params[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    raise TypeError(f"layer {l} takes *args; the walk cannot replay its call")
                else:
                    call[name] = value
            first = next(iter(params))
            call["_hidden"] = call.pop(first).detach()
            call["_first"] = first
            self.calls[l] = call
        return hook

    def _arguments(self, l: int, start: int, cache: _Prefix, device) -> dict:
        call, q = self.calls[l], self.n - start
        out = {}
        for name, value in call.items():
            if name == "_first":
                continue
            if name in _CACHE_ARGS:
                out[name] = cache
            elif name == "attention_mask":
                if value is None:  # the model relied on is_causal: make the offset causal mask explicit
                    key = torch.arange(self.n, device=device)
                    value = (key[None, :] <= start + torch.arange(q, device=device)[:, None])[None, None]
                else:
                    value = value[..., start:, :]
                out[name] = value
            elif name == "position_ids":
                out[name] = value[..., start:]
            elif name == "cache_position":
                out[name] = None if value is None else value[start:]
            elif name == "position_embeddings":
                out[name] = None if value is None else tuple(v[:, start:] for v in value)
            elif isinstance(value, torch.Tensor):
                raise TypeError(f"layer {l} got an argument {name!r} the walk does not know how to cut to positions")
            else:
                out[name] = value
        return out

    def run(self, l: int, hidden: torch.Tensor, start: int,
            prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
            restore: dict[str, Restore] | None = None, last_only: bool = False, inplace: bool = False,
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Layer `l` on `hidden` `[rows, n - start, d]` → (output `[rows, n - start, d]`, this
        call's new keys/values `[rows, kv_heads, n - start, head_dim]`). `prefix`: keys/values of
        positions `< start` (None when start = 0). `restore`: see the module doc. `last_only`:
        return only the last position's output `[rows, 1, d]` (the lean layers compute only what
        it needs). `inplace`: the lean layers may update `hidden` into the output instead of copying
        (the caller then owns the buffer; the replay always returns a new tensor)."""
        if (prefix is None) != (start == 0):
            raise ValueError(f"a prefix is needed exactly when start > 0 (start={start})")
        if self.lean is not None:
            cos, sin = (x[0, start:] for x in self.calls[l]["position_embeddings"])
            return self.lean[l](hidden, cos, sin, start, prefix, restore, last_only, inplace)
        cache = _Prefix(prefix)
        kwargs = self._arguments(l, start, cache, hidden.device)
        kwargs[self.calls[l]["_first"]] = hidden
        sites = {"attn": self.model.attn_out(l), "mlp": self.model.mlp_out(l)}
        # intervene runs the block in model.native(): a bridge's own attention would not read the prefix
        with intervene(self.model, {sites[name]: _restore_site(r) for name, r in (restore or {}).items()}):
            out = self.layers[l](**kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return (out[:, -1:] if last_only else out), cache.new

    def head(self, final: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head (and Gemma's logit soft-capping) on `[rows, d_model]` → `[rows, vocab]`."""
        if self.lean is not None:
            return self.lean.head(final)
        hf, arch = self.model.hf, self.model.arch
        x = hf.get_submodule(arch.final_norm)(final)
        project_out = getattr(hf.get_submodule(arch.layers.rsplit(".", 1)[0]), "project_out", None)
        if project_out is not None:  # OPT-350m
            x = project_out(x)
        logits = hf.get_output_embeddings()(x)
        cap = getattr(hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def compute_dtype(model) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on for the model's device, else the model's."""
    kind = model.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else model.dtype


def _restore_site(restore: Restore):
    """Site patch applying `restore` (see `apply_restore`) to the site's output."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        apply_restore(x.view(len(restore[0]), -1, x.shape[-1]), restore)  # OPT runs its MLP on [rows * pos, d]
        return x
    return fn
