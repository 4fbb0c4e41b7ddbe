"""Which implementation runs a kernel: Triton on CUDA tensors, torch everywhere else.

    >>> import torch
    >>> from tracelab.kernels import resolve_backend
    >>> resolve_backend("auto", torch.zeros(3))          # CPU tensors take the torch path
    'torch'

Switches, read at every call:

- ``TRACELAB_FORCE_TRITON=1`` runs the Triton kernels on any tensors. CPU tensors need Triton's
  interpreter, ``TRITON_INTERPRET=1``, which Triton reads when a kernel is *decorated*. tracelab
  decorates its kernels lazily, at the first Triton call of the process, so the variable must be
  set before that call; simplest is on the command line:
  ``TRITON_INTERPRET=1 TRACELAB_FORCE_TRITON=1 pytest tests/test_kernels.py``.
- ``TRACELAB_FORCE_TRITON=0`` never uses Triton: the torch fallbacks run everywhere.

Without a switch, CUDA tensors take the Triton path when Triton can compile for the GPU; when it
cannot (not installed, no driver, an unsupported GPU) they quietly take the torch path, and the
reason is logged once at INFO level. Under TRITON_INTERPRET=1, Triton runs only when asked for
(``backend="triton"`` or the switch), and only such a request raises when Triton cannot run.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from types import ModuleType
from typing import Literal

import torch

Backend = Literal["auto", "torch", "triton"]
FORCE_VAR = "TRACELAB_FORCE_TRITON"
_KERNELS_MODULE = f"{__package__}.triton_kernels"
_log = logging.getLogger(__name__)


def interpreting() -> bool:
    """Whether tracelab's Triton kernels run (or, not built yet, would run) in Triton's interpreter.

        >>> isinstance(interpreting(), bool)
        True
    """
    built = sys.modules.get(_KERNELS_MODULE)
    if built is not None:  # decided when the kernels were decorated; the variable no longer matters
        return built.INTERPRETED
    return _interpret_variable()


def _interpret_variable() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.cache
def _import_problem() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        return f"Triton cannot be imported ({type(e).__name__}: {e}); install it with `pip install triton`"
    return None


@functools.cache
def _gpu_driver_problem() -> str | None:
    import triton

    try:
        triton.runtime.driver.active.get_current_target()
    except Exception as e:  # "0 active drivers", missing libcuda, unsupported GPU...
        return f"Triton found no usable GPU driver ({type(e).__name__}: {e})"
    return None


def triton_problem(device: torch.device | str) -> str | None:
    """Why tracelab's Triton kernels cannot run on tensors of ``device`` now, or None if they can.

        >>> problem = triton_problem("cpu")    # None under TRITON_INTERPRET=1, else how to get there
    """
    problem = _import_problem()
    if problem is not None:
        return problem
    device = torch.device(device)
    if interpreting():  # the interpreter runs on the host and copies CUDA tensors through it
        return None
    if device.type == "cpu":
        if _interpret_variable():
            return ("the Triton kernels were already built for the GPU in this process, so its "
                    "interpreter cannot run them: start a fresh process with TRITON_INTERPRET=1")
        return ("Triton runs kernels on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
                "in the environment before the first kernel call (e.g. on the command line)")
    if device.type != "cuda":
        return f"the Triton kernels support CUDA tensors only, not {device.type} tensors"
    return _gpu_driver_problem()


def resolve_backend(requested: Backend, *tensors: torch.Tensor) -> Literal["torch", "triton"]:
    """The implementation to run on ``tensors``: ``requested``, or for "auto" the switch and device.

        >>> resolve_backend("torch", torch.zeros(3))
        'torch'

    Raises ValueError for an unknown ``requested`` or switch value, RuntimeError (saying how to fix
    it) when Triton is asked for explicitly and cannot run on these tensors.
    """
    if requested not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {requested!r}")
    if requested == "torch":
        return "torch"
    device = tensors[0].device
    how, instead = "backend='triton' was passed", "pass backend='auto' or 'torch'"
    if requested == "auto":
        force = os.environ.get(FORCE_VAR, "").strip()
        if force not in ("", "0", "1"):
            raise ValueError(f"{FORCE_VAR} must be 1 (always Triton), 0 (never) or unset (Triton on "
                             f"CUDA tensors); got {force!r}")
        if force == "0":
            return "torch"
        if force == "":  # compiled kernels on CUDA tensors; the interpreter only when asked for
            if device.type != "cuda" or interpreting():
                return "torch"
            problem = triton_problem(device)
            if problem is not None:
                _log_once(f"tracelab.kernels uses the torch fallbacks: {problem}")
                return "torch"
            return "triton"
        how, instead = f"{FORCE_VAR}=1 is set", f"unset {FORCE_VAR} or set it to 0"
    problem = triton_problem(device)
    if problem is not None:
        raise RuntimeError(f"{how}, asking for the Triton kernels on {device.type} tensors, but {problem}. "
                           f"To use the torch implementation instead, {instead}.")
    return "triton"


@functools.cache
def _log_once(message: str) -> None:
    _log.info(message)


def kernels() -> ModuleType:
    """The module of Triton kernels, imported (and its kernels decorated) at the first call."""
    from . import triton_kernels

    return triton_kernels
