"""Saving results: tensors in safetensors, metadata in JSON, side by side. Never pickle.

    >>> save_tensors("out/trace", {"resid": t}, {"prompt": "..."})   # out/trace.safetensors + .json
    >>> tensors, meta = load_tensors("out/trace")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


class UnreadableFile(ValueError):
    """A saved file exists but cannot be read (truncated, overwritten, not what it claims to be)."""


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what `save_tensors` wrote: `(tensors, meta)`. FileNotFoundError when it is not there,
    `UnreadableFile` (naming the file) when it is there but cannot be read."""
    stem = _stem(path)
    if not stem.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no saved result at {stem} (expected {stem}.json and {stem}.safetensors)")
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnreadableFile(f"{stem}.json is not valid JSON ({e})") from e
    try:
        tensors = load_file(stem.with_suffix(".safetensors"))
    except Exception as e:  # safetensors raises its own SafetensorError (or OSError) for a damaged file
        raise UnreadableFile(f"{stem}.safetensors cannot be read ({type(e).__name__}: {e})") from e
    return tensors, meta


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (dtype and shape included), first 16 hex digits."""
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return digest.hexdigest()[:16]


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """One hash of named tensors (sorted by name)."""
    return hashlib.sha256("".join(f"{k}:{tensor_hash(v)}" for k, v in sorted(tensors.items())).encode()).hexdigest()[:16]


def slug(text: str) -> str:
    """A file-name-safe form of `text` (a model name, a corpus id): at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "model"
