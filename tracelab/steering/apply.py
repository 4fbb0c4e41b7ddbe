"""Apply steering vectors with the model's site hooks: `steer` (a `with` block) and `generate`.

    >>> with steer(model, v, alpha=4.0):                       # h_l ← h_l + α·v_l at v's layers
    ...     model.predict("I thought the movie was")
    >>> with steer(model, [(sentiment, 4.0), (formality, -2.0)], positions="after_prompt"):
    ...     ...
    >>> generate(model, "I thought the movie was", steer=v, alpha=4.0, max_new_tokens=20)

Hooks sit on `model.resid(l)` (block outputs) and are removed when the block exits, also on
error, so logits afterwards are exactly the unsteered ones.
"""

from __future__ import annotations

import numbers
from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence, Union

import torch

from ..models.loading import as_model
from .vector import SteeringVector

Steering = Union[SteeringVector, Sequence[tuple[SteeringVector, float]]]
POSITIONS = ("all", "after_prompt")


def _terms(vector: Steering, alpha: float | Sequence[float]) -> list[tuple[SteeringVector, float]]:
    """Normalise `vector`/`alpha` into `[(vector, alpha), ...]`."""
    if isinstance(vector, SteeringVector):
        if not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a number for one vector, got {alpha!r}")
        return [(vector, float(alpha))]
    if isinstance(vector, (list, tuple)) and vector:
        terms = []
        for item in vector:
            if isinstance(item, SteeringVector):
                terms.append((item, float(alpha)))
            elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], SteeringVector):
                terms.append((item[0], float(item[1])))
            else:
                raise TypeError(f"expected SteeringVector or (SteeringVector, alpha), got {item!r}")
        return terms
    raise TypeError(f"steer needs a SteeringVector or a list of (SteeringVector, alpha), got {type(vector).__name__}")


def _deltas(model, terms, layers) -> dict[int, torch.Tensor]:
    """Per layer, the sum Σ_i α_i·v_{i,l} `[d_model]` on the model's device and dtype.

    `layers` picks the layers to steer; a one-layer vector may be applied at other layers."""
    deltas: dict[int, torch.Tensor] = {}
    for vector, alpha in terms:
        vector.check(model)
        targets = vector.layers if layers is None else [model.resid(l).layer for l in layers]
        for l in targets:
            if l in vector.directions:
                direction = vector.directions[l]
            elif len(vector.layers) == 1:
                direction = vector.directions[vector.layers[0]]
            else:
                raise ValueError(f"layer {l} is not in vector {vector.method!r} (layers {vector.layers}); "
                                 f"pick layers from those, or use a one-layer vector (vector.at(layer))")
            deltas[l] = deltas.get(l, 0) + alpha * direction
    return {l: d.to(model.device, model.dtype) for l, d in deltas.items()}


@contextmanager
def steer(
    model,
    vector: Steering,
    alpha: float = 1.0,
    *,
    layers: int | Sequence[int] | None = None,
    positions: str | Sequence[int] = "all",
    norm_match: bool = False,
) -> Iterator[None]:
    """Add α·v to the residual stream (block outputs) for forward passes inside the block.

        >>> with steer(model, v, alpha=4.0, layers=[12], positions="after_prompt"):
        ...     logits = model.next_token_logits("I thought the movie was")

    `vector`: a `SteeringVector` (scaled by `alpha`) or `[(vector, alpha), ...]` for several at
    once. `layers`: which layers (default: every layer of each vector). `positions`: "all";
    "after_prompt" (the last prompt token, which predicts the first new token, and every token
    generated after it; right padding is handled through the attention mask; a forward pass
    over prompt + answer (teacher forcing) counts it all as the prompt, so score such passes
    with "all"); or position indices into each forward pass's tokens. `norm_match`: rescale each steered position back to its unsteered norm,
    h' = (h + α·v)·‖h‖/‖h + α·v‖, so large α changes direction, not scale.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS} or a list of indices, got {positions!r}")
    if isinstance(layers, int):
        layers = [layers]
    deltas = _deltas(model, _terms(vector, alpha), layers)
    last_real: list[torch.Tensor | None] = [None]  # [batch] index of each row's last real token

    def note_mask(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        ok = ids is not None and mask is not None and mask.shape == ids.shape
        last_real[0] = (mask.bool() * torch.arange(ids.shape[1], device=mask.device)).argmax(1) if ok else None

    def which(x: torch.Tensor) -> torch.Tensor | None:
        """`[batch, pos, 1]` mask of steered positions (None: all)."""
        if positions == "all":
            return None
        pos = torch.arange(x.shape[1], device=x.device)
        if positions == "after_prompt":
            if x.shape[1] == 1:  # a generation step (or a one-token prompt): steer it
                return None
            last = last_real[0] if last_real[0] is not None else torch.tensor([x.shape[1] - 1])
            return (pos[None, :] >= last.to(x.device)[:, None])[..., None]
        mask = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        mask[[p for p in positions if -x.shape[1] <= p < x.shape[1]]] = True
        return mask[None, :, None]

    def add(delta: torch.Tensor):
        def fn(x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, d_model]
            steered = x + delta.to(x.dtype)
            if norm_match:
                steered = steered * (x.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True).clamp_min(1e-6))
            mask = which(x)
            return steered if mask is None else torch.where(mask, steered, x)

        return fn

    with ExitStack() as stack:
        if positions == "after_prompt":
            handle = model.hf.register_forward_pre_hook(note_mask, with_kwargs=True)
            stack.callback(handle.remove)
        # native=False: the block runs the user's own calls, through their wrapper if they hold one
        stack.enter_context(model.patch({model.resid(l): add(d) for l, d in deltas.items()}, native=False))
        yield


@torch.no_grad()
def generate(
    model,
    prompts: str | Sequence[str],
    steer: Steering | None = None,
    alpha: float = 1.0,
    *,
    max_new_tokens: int = 40,
    layers: int | Sequence[int] | None = None,
    positions: str | Sequence[int] = "after_prompt",
    norm_match: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> str | list[str]:
    """Continue prompts, optionally steered; returns the new text only (str for a str prompt).

        >>> generate(model, "I thought the movie was", max_new_tokens=20)              # unsteered
        >>> generate(model, "I thought the movie was", steer=v, alpha=4.0)            # steered

    Greedy by default (`do_sample=True` samples with `temperature`, seeded by `seed`). Batches
    are left-padded so every row's prompt ends at the same position.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed)
    with ExitStack() as stack:
        if steer is not None:
            stack.enter_context(_steer(model, steer, alpha, layers=layers, positions=positions, norm_match=norm_match))
        batch, new = generate_ids(model, texts, **options)
    texts_out = model.tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts_out[0] if isinstance(prompts, str) else texts_out


@torch.no_grad()
def generate_ids(
    model, prompts: Sequence[str], *, max_new_tokens: int = 40, do_sample: bool = False,
    temperature: float = 1.0, seed: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Continue `prompts` with whatever hooks are active: `(batch, new_ids)`.

        >>> batch, new = generate_ids(model, ["I thought the movie was"], max_new_tokens=5)

    `batch`: the left-padded prompts (`input_ids`, `attention_mask` `[batch, pos]`); `new`:
    the generated ids `[batch, max_new_tokens]` (after an end-of-text token, pad ids).
    """
    options = dict(do_sample=do_sample)
    if do_sample:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        options.update(temperature=None, top_k=None, top_p=None)
    return model.generate(list(prompts), max_new_tokens, seed=seed, **options)


_steer = steer  # `generate`'s parameter is named `steer`
