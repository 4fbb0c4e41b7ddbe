"""Trained editors on disk: where a learned method's network is kept, and how it is found again.

    >>> path = checkpoint_stem(model, "mend", [27, 28, 29], data_sha="1a2b…")   # where training writes
    >>> state, meta = find_editor(model, "mend", [27, 28, 29])                   # what tl.edit loads

A checkpoint is `<stem>.safetensors` (the editor's tensors) and `<stem>.json` (its provenance:
method, base model and the hash of its weights, layers, data file and its sha256, hyperparameters,
steps, seed, validation history, and the hash of the tensors). It lives in
`$TRACELAB_CACHE/editors/<model>/<method>-L<layers>-<weights hash>-<data hash>-<settings hash>`;
a training in progress writes `<stem>-partial` beside it (resumable). Reading verifies the tensors' hash and that
the checkpoint was trained for this base model (weights hash) and these layers; a mismatch names
the training command. No checkpoint is ever shipped with the code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..io import UnreadableFile, load_tensors, save_tensors, slug, tensors_hash
from ..models import Model


def model_weights_hash(model: Model) -> str:
    """The hash of every weight of the unedited base model (embedding and all blocks)."""
    from .toolkit.stats import weights_hash

    return weights_hash(model, model.n_layers - 1)


def file_sha256(path: str | Path) -> str:
    """sha256 of a data file's bytes, first 16 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def editors_dir(model: Model) -> Path:
    from ..models.loading import cache_dir

    return cache_dir() / "editors" / slug(model.name)


def _layers_tag(layers: list[int]) -> str:
    return "L" + "-".join(str(l) for l in layers)


def checkpoint_stem(model: Model, method: str, layers: list[int], data_sha: str, settings: dict,
                    weights: str | None = None) -> Path:
    """Where a training of `method` at `layers` on data `data_sha` with `settings` (hyperparameters)
    for this base model writes."""
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return editors_dir(model) / f"{method}-{_layers_tag(layers)}-{weights or model_weights_hash(model)}-{data_sha}-{tag}"


def train_command(method: str, layers: list[int]) -> str:
    chosen = f" --layers {','.join(str(l) for l in layers)}" if layers else ""  # SERAC edits at no layer
    return (f"tracelab train-editor {method} --data ../shared/data/zsre-sample.json --limit 500{chosen}"
            f"   (or tl.train_editor({method!r}, model, ...))")


def save_checkpoint(stem: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors and provenance (with the tensors' hash) at `stem`."""
    return save_tensors(stem, tensors, {**meta, "tensors": tensors_hash(tensors)})


def read_checkpoint(stem: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(tensors, meta)` of a checkpoint, refusing tensors that are not the ones saved."""
    tensors, meta = load_tensors(stem)
    if tensors_hash(tensors) != meta.get("tensors"):
        raise UnreadableFile(f"{stem}.safetensors was changed after it was saved (hash {tensors_hash(tensors)}, "
                             f"saved {meta.get('tensors')}): train again, or restore the file")
    return tensors, meta


def find_editor(model: Model, method: str, layers: list[int], path: str | Path | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest finished checkpoint of `method` for this base model and `layers` (or the one at
    `path`, checked the same way): `(tensors, provenance with "path")`. ValueError naming the
    training command when there is none, or when the one given was trained on another base model
    or layer set."""
    weights = model_weights_hash(model)
    if path is not None:
        stem = Path(path).with_suffix("") if str(path).endswith(".json") else Path(path)
        tensors, meta = read_checkpoint(stem)
        _check(meta, method, weights, layers, Path(path))
        return tensors, {**meta, "path": str(stem)}
    folder = editors_dir(model)
    mine = sorted(folder.glob(f"{method}-{_layers_tag(layers)}-{weights}-*.json"), key=lambda p: p.stat().st_mtime)
    mine = [p for p in mine if not p.name.endswith("-partial.json")]
    if not mine:
        others = [p.name for p in folder.glob(f"{method}-*.json") if not p.name.endswith("-partial.json")]
        seen = f"; found {others} trained for another base model (weights hash) or layer set" if others else ""
        raise ValueError(f"no trained {method} editor for {model.name} (weights {weights}) at layers {layers} in "
                         f"{folder}{seen}. Train one first:\n  {train_command(method, layers)}")
    tensors, meta = read_checkpoint(mine[-1].with_suffix(""))
    _check(meta, method, weights, layers, mine[-1])
    return tensors, {**meta, "path": str(mine[-1].with_suffix(""))}


def _check(meta: dict, method: str, weights: str, layers: list[int], where: Path) -> None:
    problems = []
    if meta.get("method") != method:
        problems.append(f"it is a {meta.get('method')!r} editor, not {method!r}")
    if meta.get("weights") != weights:
        problems.append(f"it was trained on another base model (weights {meta.get('weights')}, this one {weights})")
    if list(meta.get("layers", [])) != list(layers):
        problems.append(f"it was trained for layers {meta.get('layers')}, not {layers}")
    if meta.get("status") != "finished":
        problems.append("its training has not finished (resume it with the same command)")
    if problems:
        raise ValueError(f"the checkpoint {where} cannot edit this model: {'; '.join(problems)}. "
                         f"Train one for it:\n  {train_command(method, layers)}")
