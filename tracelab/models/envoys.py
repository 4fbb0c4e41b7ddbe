"""Sites as nnsight envoys: the same dotted module paths, reached through an nnsight model.

    >>> x = site_tensor(envoy(lm, model.resid(3).module).output, rows, n)   # [rows, n, d], in a trace

Used by the nnsight execution paths (`tracing.nnsight_engine`, `steering.remote`).
"""

from __future__ import annotations

import torch

from .hooks import site_view
from .wrappers import is_nnsight


def nnsight_model(user_object, hf):
    """The user's nnsight model if `user_object` is one (it may be remote-capable), else
    `NNsight(hf)` wrapping the transformers model in place (same weights)."""
    if is_nnsight(user_object):
        return user_object
    from nnsight import NNsight

    return NNsight(hf)


def envoy(root, path: str):
    """The nnsight envoy of the module at dotted `path` (`model.layers.3.mlp`) under `root`."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def site_tensor(value, rows: int, n: int) -> torch.Tensor:
    """A module output as `[rows, n, width]` sharing its storage (the first element of a tuple;
    OPT's flattened `[rows·n, width]` MLP rows viewed back), so in-place writes reach the model."""
    x = value[0] if isinstance(value, tuple) else value
    return site_view(x, rows, n)
