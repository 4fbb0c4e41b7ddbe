"""`SteeringVector`: one direction per layer, with the method and data that made it.

    >>> v = caa(model, contrast_set("sentiment").pairs, layers=[12])
    >>> v.save("out/sentiment")                    # out/sentiment.safetensors + .json
    >>> w = SteeringVector.load("out/sentiment")
    >>> (v - 0.5 * w).cosine(v)                    # {12: 1.0}
    >>> with steer(model, v, alpha=4.0):            # add 4·v to blocks.12.resid (steering.apply)
    ...     model.predict("I thought the movie was")
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from ..io import load_tensors, save_tensors


@dataclass
class SteeringVector:
    """A direction in the residual stream for each of some layers.

        >>> v = SteeringVector({6: torch.randn(576)}, model_name="smollm2-135m")
        >>> v.layers, v.d_model                    # ([6], 576)
        >>> (2 * v - v).directions[6]              # arithmetic is per layer; a missing layer is 0
        >>> v.project(acts)                        # acts [..., 576] -> [...] scalar projections

    `directions`: layer → `[d_model]` tensor (float32, CPU; moved to the model when applied).
    `method` ("caa", "repe", "actadd", or an arithmetic expression of those), `position` (the
    token whose activations made it: "last" or "mean"), `meta` (data provenance: the pair set,
    how many pairs, ...), `reading_accuracy` (layer → fraction of held-out pairs whose positive
    side projects higher; filled by `repe` and `reading_accuracy`).
    """

    directions: dict[int, torch.Tensor]
    model_name: str
    method: str = "custom"
    position: str = "last"
    meta: dict[str, Any] = field(default_factory=dict)
    reading_accuracy: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a SteeringVector needs at least one layer's direction, got none")
        widths = {tuple(v.shape) for v in self.directions.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise ValueError(f"directions must all be [d_model] vectors of one width, got shapes {sorted(widths)}")
        self.directions = {int(l): v.detach().float().cpu() for l, v in sorted(self.directions.items())}

    # ---- what it is -------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    def __repr__(self) -> str:
        norms = ", ".join(f"{l}: {float(v.norm()):.3g}" for l, v in self.directions.items())
        return f"SteeringVector({self.method!r}, model={self.model_name!r}, d_model={self.d_model}, norms={{{norms}}})"

    def norm(self) -> dict[int, float]:
        """L2 norm of each layer's direction."""
        return {l: float(v.norm()) for l, v in self.directions.items()}

    def at(self, layers: int | Sequence[int]) -> "SteeringVector":
        """The same vector restricted to `layers` (ValueError naming the layers it has)."""
        layers = [layers] if isinstance(layers, int) else list(layers)
        missing = [l for l in layers if l not in self.directions]
        if missing or not layers:
            raise ValueError(f"layers {layers} not all in this vector: it has layers {self.layers}")
        return replace(self, directions={l: self.directions[l] for l in layers},
                       reading_accuracy={l: a for l, a in self.reading_accuracy.items() if l in layers})

    def unit(self) -> "SteeringVector":
        """Each layer's direction scaled to norm 1."""
        return replace(self, directions={l: v / v.norm().clamp_min(1e-12) for l, v in self.directions.items()})

    def best_layer(self) -> int:
        """The layer with the highest reading accuracy, the earliest among ties (needs
        `reading_accuracy`, e.g. from `repe`)."""
        if not self.reading_accuracy:
            raise ValueError("no reading accuracy on this vector: build it with repe(...) or call "
                             "reading_accuracy(model, vector, held_out_pairs) first")
        return max(self.reading_accuracy, key=lambda l: (self.reading_accuracy[l], -l))

    def check(self, model) -> None:
        """ValueError if this vector cannot steer `model` (width or layers differ)."""
        if self.d_model != model.d_model:
            raise ValueError(
                f"steering vector has d_model={self.d_model} (made on {self.model_name!r}) but model "
                f"{model.name!r} has d_model={model.d_model}: build the vector on the model you steer"
            )
        bad = [l for l in self.layers if not 0 <= l < model.n_layers]
        if bad:
            raise ValueError(f"vector layers {bad} out of range: model {model.name!r} has layers 0..{model.n_layers - 1}")
        if self.model_name != model.name:
            warnings.warn(f"steering vector was made on {self.model_name!r}, applying it to {model.name!r}", stacklevel=3)

    # ---- arithmetic: per layer, a layer missing on one side counts as zero -------------------
    def _combine(self, other: "SteeringVector", sign: float, symbol: str) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine vectors of d_model {self.d_model} and {other.d_model} "
                             f"(made on {self.model_name!r} and {other.model_name!r})")
        zero = torch.zeros(self.d_model)
        layers = sorted(set(self.directions) | set(other.directions))
        directions = {l: self.directions.get(l, zero) + sign * other.directions.get(l, zero) for l in layers}
        return SteeringVector(directions, self.model_name, f"({self.method}) {symbol} ({other.method})",
                              self.position if self.position == other.position else "mixed",
                              {"terms": [self.meta, other.meta]})

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0, "-")

    def __mul__(self, scale: float) -> "SteeringVector":
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
            return NotImplemented
        return replace(self, directions={l: v * float(scale) for l, v in self.directions.items()},
                       method=f"{float(scale):g} * ({self.method})")

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> "SteeringVector":
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
            return NotImplemented
        if scale == 0:
            raise ZeroDivisionError("cannot divide a steering vector by 0")
        return self * (1.0 / float(scale))

    def __neg__(self) -> "SteeringVector":
        return replace(self, directions={l: -v for l, v in self.directions.items()}, method=f"-({self.method})")

    # ---- geometry ----------------------------------------------------------------------------
    def cosine(self, other: "SteeringVector | torch.Tensor") -> dict[int, float]:
        """Cosine similarity per shared layer: `{layer: cos(v_l, w_l)}` (a tensor `[d_model]` is
        compared with every layer)."""
        if isinstance(other, torch.Tensor):
            other_dirs = {l: other for l in self.layers}
        elif isinstance(other, SteeringVector):
            other_dirs = other.directions
        else:
            raise TypeError(f"cosine needs a SteeringVector or a [d_model] tensor, got {type(other).__name__}")
        shared = [l for l in self.layers if l in other_dirs]
        if not shared:
            raise ValueError(f"no shared layers: this vector has {self.layers}, the other {sorted(other_dirs)}")
        return {l: float(torch.cosine_similarity(self.directions[l], other_dirs[l].detach().float().cpu(), dim=0))
                for l in shared}

    def project(self, acts: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Scalar projection of activations on the unit direction: `acts · v̂_l`, `[..., d_model]` → `[...]`.

        `layer` may be left out when the vector has a single layer."""
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"this vector has layers {self.layers}: say which with layer=")
            layer = self.layers[0]
        if layer not in self.directions:
            raise ValueError(f"layer {layer} not in this vector: it has layers {self.layers}")
        if acts.shape[-1] != self.d_model:
            raise ValueError(f"activations end in width {acts.shape[-1]}, this vector has d_model={self.d_model}")
        v = self.directions[layer].to(acts.device, torch.float32)
        return acts.float() @ (v / v.norm().clamp_min(1e-12))

    # ---- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write `<path>.safetensors` (one tensor per layer) and `<path>.json`; returns the stem."""
        meta = {"kind": "tracelab.SteeringVector", "model_name": self.model_name, "method": self.method,
                "position": self.position, "meta": self.meta,
                "reading_accuracy": {str(l): a for l, a in self.reading_accuracy.items()}}
        return str(save_tensors(path, {f"layer.{l}": v for l, v in self.directions.items()}, meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringVector":
        """Read what `save` wrote."""
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "tracelab.SteeringVector":
            raise ValueError(f"{path} holds {meta.get('kind', 'something else')!r}, not a saved SteeringVector")
        return cls({int(k.split(".")[1]): v for k, v in tensors.items()}, meta["model_name"], meta["method"],
                   meta["position"], meta["meta"], {int(l): a for l, a in meta["reading_accuracy"].items()})
