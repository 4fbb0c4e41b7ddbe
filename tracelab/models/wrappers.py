"""The user's wrapped models: nnsight objects and TransformerLens bridges, and the transformers
modules inside them.

    >>> hf, tokenizer = unwrap_user_object(lm)       # nnsight TransformersModel → its HF model
    >>> inner_module(model.hf.model.layers[3])       # a bridge's BlockBridge → the LlamaDecoderLayer
    >>> forward_signature(layer)                     # its forward's parameters, even under nnsight

Both libraries keep the transformers modules and wrap them in place, so tracelab reaches them
instead of replaying the wrapper:

- nnsight (`NNsight`, `LanguageModel`, `TransformersModel`) keeps every module and installs a
  `Controller` object as each module's `forward`; its signature is the unbound class forward's
  (with `self`), so calls are bound against the class's forward instead.
- A TransformerLens 4 `TransformerBridge` replaces each module of the HF model by a bridge
  component that holds the original as `_original_component`. Some components compute with
  the original's weights instead of calling it (the attention bridges do), so hooks stay on the
  outer module (whose output is what the residual stream receives) while weights and decoder
  layers are read from the inner one. The bridges' attention reads its KV cache only under the
  names `past_key_values`/`layer_past` (transformers 5.24 passes `cache`), so the fast paths that
  run layers on a cached prefix enter `transformers_forwards`: each bridge component calls the
  module it wraps, and the math is exactly the unwrapped model's.
"""

from __future__ import annotations

import inspect
import types
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from torch import nn


def _library(obj) -> str:
    return type(obj).__module__.split(".")[0]


def is_nnsight(obj) -> bool:
    """Whether `obj` is an nnsight model (`NNsight`, `TransformersModel`, `LanguageModel`)."""
    return _library(obj) == "nnsight"


def is_transformer_lens(obj) -> bool:
    """Whether `obj` comes from TransformerLens (a `TransformerBridge` or one of its components)."""
    return _library(obj) == "transformer_lens"


def unwrap_user_object(obj) -> tuple[nn.Module, object] | None:
    """(HF model, tokenizer) inside a TransformerLens `TransformerBridge` or an nnsight model;
    None for anything else. The user's object and the `Model` share the same weights, so edits
    are visible through both."""
    if is_nnsight(obj):
        return obj._module, getattr(obj, "tokenizer", None)
    if is_transformer_lens(obj):
        if not isinstance(getattr(obj, "original_model", None), nn.Module):
            raise TypeError(
                f"{type(obj).__name__} from TransformerLens is not supported: pass a TransformerBridge "
                "(TransformerLens 4), whose .original_model is a transformers model"
            )
        return obj.original_model, getattr(obj, "tokenizer", None)
    return None


def inner_module(module: nn.Module) -> nn.Module:
    """The transformers module beneath any TransformerLens bridge components wrapping it
    (`module` itself when it is not wrapped)."""
    while is_transformer_lens(module) and isinstance(getattr(module, "_original_component", None), nn.Module):
        module = module._original_component
    return module


def forward_signature(module: nn.Module) -> inspect.Signature:
    """The parameters `module(...)` binds its arguments to: its class's forward bound to it (an
    nnsight `Controller` installed as `forward` reports the unbound signature, `self` first)."""
    forward = type(module).forward
    return inspect.signature(types.MethodType(forward, module))


def layer_takes_named_arguments(module: nn.Module) -> bool:
    """Whether a decoder layer's forward names its parameters, so its calls can be replayed (a
    forward of only `*args, **kwargs`, as a wrapper's, cannot)."""
    params = list(forward_signature(module).parameters.values())
    return bool(params) and params[0].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL) \
        and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


@contextmanager
def forwards_replaced(replacements: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Inside the block each module runs its paired function as `forward`; on exit every module's
    `forward` is what it was (a class forward, or the one nnsight installed on the instance).

        >>> with forwards_replaced([(model.layer(0), lambda *args, **kwargs: recorded)]):
        ...     model.hf(input_ids=ids)                     # layer 0 returns `recorded`
    """
    # Written to the instance's __dict__ directly: a bridge's __setattr__ would pass `forward` on
    # to the module it wraps.
    pairs = list(replacements)
    installed = [vars(module).get("forward") for module, _ in pairs]
    try:
        for module, forward in pairs:
            vars(module)["forward"] = forward
        yield
    finally:
        for (module, _), forward in zip(pairs, installed):
            if forward is None:
                vars(module).pop("forward", None)
            else:
                vars(module)["forward"] = forward


def transformers_forwards(root: nn.Module):
    """A context inside which every TransformerLens bridge component under `root` (included) runs
    the transformers module it wraps instead of its own reimplementation; hooks registered on the
    components still fire. Nothing changes for unwrapped models.

        >>> with transformers_forwards(model.hf):
        ...     out = model.hf(input_ids=suffix, cache=prefix_cache)   # the HF attention reads the cache
    """
    return forwards_replaced((m, m._original_component.__call__) for m in root.modules() if inner_module(m) is not m)
