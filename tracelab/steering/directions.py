"""Making directions from contrast pairs: ActAdd, CAA and RepE reading vectors.

    >>> s = contrast_set("sentiment")
    >>> v = caa(model, s.pairs, layers=[12])                   # mean difference at layer 12
    >>> r = repe(model, s.pairs, held_out=0.25)                # PCA direction at every layer
    >>> r.reading_accuracy                                     # {layer: held-out pair accuracy}
    >>> layer = r.best_layer()
    >>> a = actadd(model, "Love", "Hate", layer=6)             # one pair's difference

References: Turner et al. 2023 (ActAdd), Rimsky et al. 2024 (CAA), Zou et al. 2023 (RepE).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models.loading import as_model
from .pairs import Pair, as_pairs, split
from .vector import SteeringVector

POSITIONS = ("last", "mean")


def _layers(model, layers: int | Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ValueError(f"no layers given: pass layer indices in 0..{model.n_layers - 1} (or None for all)")
    return sorted({model.resid(l).layer for l in layers})  # ValueError when out of range


@torch.no_grad()
def activations(
    model, texts: Sequence[str], layers: Sequence[int], position: str = "last",
    batch_size: int = 16, progress: bool = False,
) -> torch.Tensor:
    """Residual stream (block outputs) of each text at `layers`, at one token.

        >>> activations(model, ["I loved it.", "I hated it."], [6, 12])   # [2, 2, d_model]

    `position`: "last" (the last token: in a CAA pair, the answer) or "mean" (mean over the
    text's tokens after the first, whose residual is an outlier "attention sink" hundreds of
    times larger than the others in mid layers). Returns float32 `[n_texts, n_layers, d_model]` on CPU.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    sites = [model.resid(l) for l in layers]
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="activations", disable=not progress):
        batch = model.tokenize(list(texts[start : start + batch_size]))
        with model.record(sites, stop=True) as cache:
            model.hf(**batch)
        h = torch.stack([cache[s.name] for s in sites], dim=1).float()  # [batch, layer, pos, d]
        mask = batch["attention_mask"].float()                          # [batch, pos]
        if position == "last":
            last = mask.sum(1).long() - 1
            out.append(h[torch.arange(len(last)), :, last])
        else:
            mask[:, 0] = mask[:, 0] * (mask.sum(1) == 1)  # skip the sink token unless it is the only one
            out.append((h * mask[:, None, :, None]).sum(2) / mask.sum(1)[:, None, None])
    return torch.cat(out).cpu()


def differences(
    model, pairs: Sequence[Pair], layers: Sequence[int], position: str = "last", progress: bool = False
) -> torch.Tensor:
    """Paired differences h_l(x⁺) − h_l(x⁻): `[n_pairs, n_layers, d_model]`."""
    pairs = as_pairs(pairs)
    acts = activations(model, [p.positive for p in pairs] + [p.negative for p in pairs], layers, position,
                       progress=progress)
    return acts[: len(pairs)] - acts[len(pairs):]


def _meta(pairs: Sequence[Pair], source: str | None) -> dict:
    return {"n_pairs": len(pairs), "source": source, "example": [pairs[0].positive, pairs[0].negative]}


def actadd(
    model, positive: str, negative: str, layer: int | Sequence[int], position: str = "last"
) -> SteeringVector:
    """ActAdd: the difference of one prompt pair's activations, v_l = h_l(positive) − h_l(negative).

        >>> v = actadd(model, "Love", "Hate", layer=6)
        >>> generate(model, "I hate you because", steer=v, alpha=5.0)

    Turner et al. add the whole token-by-token difference at the front of the prompt; here it
    is the difference at `position` ("last" token or "mean"), added wherever `steer` says.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    pairs = as_pairs([(positive, negative)])
    layers = _layers(model, layer)
    diff = differences(model, pairs, layers, position)[0]
    return SteeringVector(dict(zip(layers, diff)), model.name, "actadd", position, _meta(pairs, None))


def caa(
    model, pairs: Sequence, layers: int | Sequence[int] | None = None, position: str = "last",
    source: str | None = None, progress: bool = True,
) -> SteeringVector:
    """CAA: mean paired difference of residual activations, v_l = 1/N Σ_i h_l(x⁺_i) − h_l(x⁻_i).

        >>> v = caa(model, contrast_set("sentiment").pairs, layers=[12])
        >>> v.directions[12].shape                 # [d_model]

    `pairs`: `(positive, negative)` texts (see `as_pairs`); `position`: "last" (the answer
    token, as in Rimsky et al.) or "mean". `source` names the data in the vector's metadata.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    pairs = as_pairs(pairs)
    layers = _layers(model, layers)
    diff = differences(model, pairs, layers, position, progress)
    return SteeringVector(dict(zip(layers, diff.mean(0))), model.name, "caa", position, _meta(pairs, source))


def _first_component(d: torch.Tensor) -> torch.Tensor:
    """Unit v maximising Σ_i (d_i·v)² (first right singular vector of d `[n, d_model]`), signed so
    that mean(d·v) > 0. Uncentered PCA: the same as PCA of differences with random sign flips."""
    v = torch.linalg.svd(d.double(), full_matrices=False).Vh[0].float()
    return v if float((d @ v).mean()) >= 0 else -v


def repe(
    model, pairs: Sequence, layers: int | Sequence[int] | None = None, position: str = "last",
    held_out: float | Sequence | None = 0.25, seed: int = 0, source: str | None = None, progress: bool = True,
) -> SteeringVector:
    """RepE reading vector: first principal component of paired differences at each layer.

        >>> r = repe(model, contrast_set("sentiment").pairs, held_out=0.25)
        >>> r.reading_accuracy[r.best_layer()]     # e.g. 1.0
        >>> with steer(model, r.at(r.best_layer()), alpha=8.0): ...

    v_l = argmax_{‖v‖=1} Σ_i ((h_l(x⁺_i) − h_l(x⁻_i))·v)², sign so positives project higher; each
    direction is scaled to the mean projected difference, so α means the same as for CAA.
    `held_out`: a fraction of `pairs` kept out of the fit (seeded by `seed`), or a list of
    held-out pairs; the vector's `reading_accuracy[l]` is the fraction of held-out pairs with
    (h⁺ − h⁻)·v_l > 0. `None` fits on all pairs and measures nothing.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    pairs = as_pairs(pairs)
    layers = _layers(model, layers)
    if isinstance(held_out, (int, float)) and not isinstance(held_out, bool):
        pairs, held = split(pairs, held_out, seed) if held_out else (pairs, None)
    else:
        held = None if held_out is None else as_pairs(held_out)
    diff = differences(model, pairs, layers, position, progress)  # [n, layer, d]
    directions = {}
    for i, l in enumerate(layers):
        v = _first_component(diff[:, i])
        directions[l] = v * (diff[:, i] @ v).mean()  # [d_model], norm = mean projected difference
    vector = SteeringVector(directions, model.name, "repe", position, _meta(pairs, source))
    if held:
        vector.reading_accuracy = reading_accuracy(model, vector, held)
        vector.meta["n_held_out"] = len(held)
    return vector


def reading_accuracy(model, vector: SteeringVector, pairs: Sequence) -> dict[int, float]:
    """Per layer, the fraction of `pairs` whose positive text projects higher on the direction:
    mean_i [ (h_l(x⁺_i) − h_l(x⁻_i))·v_l > 0 ].

        >>> reading_accuracy(model, caa(model, train, layers=[12]), held_out)   # {12: 0.95}
    """
    vector.check(model)
    diff = differences(model, as_pairs(pairs), vector.layers, vector.position)
    return {l: float((vector.project(diff[:, i], l) > 0).float().mean()) for i, l in enumerate(vector.layers)}
