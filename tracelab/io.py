"""Saving results: tensors in safetensors, metadata in JSON, side by side. Never pickle.

    >>> save_tensors("out/trace", {"resid": t}, {"prompt": "..."})   # out/trace.safetensors + .json
    >>> tensors, meta = load_tensors("out/trace")
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)` and rename the result onto `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `<path>.safetensors` (contiguous CPU copies) and `<path>.json`; returns the stem.

    The JSON is written last, so a stem whose `.json` exists is complete."""
    stem = _stem(path)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(stem.with_suffix(".safetensors"), lambda tmp: save_file(cpu, tmp))
    atomic_write(stem.with_suffix(".json"),
                 lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return stem


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what `save_tensors` wrote: `(tensors, meta)`."""
    stem = _stem(path)
    if not stem.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no saved result at {stem} (expected {stem}.json and {stem}.safetensors)")
    meta = json.loads(stem.with_suffix(".json").read_text())
    return load_file(stem.with_suffix(".safetensors")), meta
