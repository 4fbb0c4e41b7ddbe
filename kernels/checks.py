"""Argument checks shared by the kernels: errors say what was given, what was expected, how to fix.

    >>> import torch
    >>> check_tensor("X", torch.zeros(2, 3), ndim=(2,), dtypes=FLOATS, shape="[n, d]")
"""

from __future__ import annotations

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INTEGERS = (torch.int32, torch.int64)


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(name: str, t: object, *, ndim: tuple[int, ...], dtypes: tuple[torch.dtype, ...],
                 shape: str, device: torch.device | None = None) -> None:
    """Raise TypeError/ValueError unless ``t`` is a tensor of one of ``ndim`` ranks and ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}; got {type(t).__name__}")
    if t.dim() not in ndim:
        raise ValueError(f"{name} must have shape {shape}; got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_names(dtypes)}; got {t.dtype}. "
                        f"Convert it with {name}.to(torch.float32) or similar")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}; "
                         f"move it with {name}.to({str(device)!r})")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], shape: str) -> None:
    """Raise ValueError unless ``t.shape == expected`` (``shape`` names the dimensions)."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {shape} = {tuple(expected)}; got {tuple(t.shape)}")
