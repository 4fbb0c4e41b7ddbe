"""`WeightDelta`: one change of one MLP output weight, with what is needed to undo it exactly.

    >>> d = WeightDelta.build(model, layer=5, delta=torch.zeros(model.d_model, model.d_mlp))
    >>> d.apply(model); d.revert(model)            # weights back, bit for bit
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..models import Model


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (dtype and shape included), first 16 hex digits."""
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass(eq=False)
class WeightDelta:
    """ΔW for `model.mlp_out_weight(layer)`, in its `matrix` orientation `[d_model, d_mlp]`.

        >>> d = WeightDelta.build(model, 5, torch.randn(576, 1536) * 1e-3)
        >>> d.apply(model)                           # W ← (W + ΔW) in the weight's dtype
        >>> d.revert(model)                          # W ← the stored original values

    `delta` is float32. `original` holds the weight as stored (its layout and dtype) once
    applied, so `revert` restores it bit for bit; `hash_before/hash_after` identify the weight.
    """

    layer: int
    name: str
    delta: torch.Tensor
    original: torch.Tensor | None = field(default=None, repr=False)
    hash_before: str = ""
    hash_after: str = ""

    @classmethod
    def build(cls, model: Model, layer: int, delta: torch.Tensor) -> WeightDelta:
        w = model.mlp_out_weight(layer)
        if tuple(delta.shape) != tuple(w.matrix.shape):
            raise ValueError(f"delta for layer {layer} has shape {tuple(delta.shape)}, expected "
                             f"{tuple(w.matrix.shape)} ([d_model, d_mlp])")
        if not torch.isfinite(delta).all():
            raise ValueError(f"the update for layer {layer} has NaN/inf entries; no weight was changed "
                             "(lower the learning rate or check the statistics)")
        return cls(layer % model.n_layers, w.name, delta.detach().float().cpu())

    @property
    def norm(self) -> float:
        return float(self.delta.norm())

    def new_weight(self, model: Model) -> torch.Tensor:
        """The edited weight as stored (layout and dtype of the parameter), not yet written."""
        w = model.mlp_out_weight(self.layer)
        matrix = (w.matrix.float() + self.delta.to(w.param.device)).to(w.param.dtype)
        return matrix if w.layout == "out_in" else matrix.T

    def apply(self, model: Model, new: torch.Tensor | None = None) -> None:
        """Write W + ΔW (or the precomputed `new`) into the model, keeping the original."""
        param = model.mlp_out_weight(self.layer).param
        new = self.new_weight(model) if new is None else new
        self.original = param.data.detach().clone()
        self.hash_before = tensor_hash(self.original)
        with torch.no_grad():
            param.data.copy_(new)
        self.hash_after = tensor_hash(param.data)

    def revert(self, model: Model) -> None:
        """Put the original weight back (bit for bit)."""
        if self.original is None:
            raise ValueError(f"delta on {self.name} was never applied, so there is nothing to undo")
        with torch.no_grad():
            model.mlp_out_weight(self.layer).param.data.copy_(self.original)
        self.original = None
