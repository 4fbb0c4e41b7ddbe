"""Training the learned editors: one loop for every method that learns to edit (MEND, KE, SERAC).

    >>> meta = tl.train_editor("mend", model, data="../shared/data/zsre-sample.json", limit=500, steps=1000)
    >>> tl.edit(model, subject=..., prompt=..., target=..., method="mend")     # finds the checkpoint
    $ tracelab train-editor mend --data ../shared/data/zsre-sample.json --limit 500 --steps 1000
    $ torchrun --standalone --nproc_per_node 2 -m tracelab train-editor mend --data ...   # data-parallel

The records (any file `read_records` reads; the first `limit`) are shuffled with `seed`; the first
`val` are held out for validation, the rest are trained on, `batch_size` edits a step in a fixed
order (each epoch reshuffled from the seed, so a resumed run sees what an uninterrupted one would).
Every `val_every` steps the held-out edits are scored; the best editor so far is kept and the run
stops after `patience` validations without improvement. Each validation writes a resumable
`<stem>-partial` checkpoint; the end writes the best editor and its provenance (see
`editing.checkpoints`). Under torchrun each rank takes every world-th edit of a step's batch and
of the validation set, and gradients and scores are summed across ranks, so two processes train
the same editor as one, up to float rounding.

A method that learns (`Method.trained = True`) provides `init_editor(model, layers, params,
records) -> nn.Module`, `training_loss(model, editor, layers, records, params) -> (loss summed
over the records, figures)`, `validate(model, editor, layers, records, params) -> [{metric:
value}]` (one dict per record with its `val_metrics`, higher is better) and
`optimizer_groups(editor, params)`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist
from .editing.checkpoints import (checkpoint_stem, file_sha256, model_weights_hash, read_checkpoint,
                                  save_checkpoint)
from .editing.registry import get, names
from .editing.toolkit.compute import weights_require_grad
from .models import Model, as_model


def training_records(data: str | Path, limit: int | None, val: int, batch_size: int) -> list:
    """The records of `data` (the first `limit`); ValueError when they cannot give `val` held-out
    records and one batch of `batch_size` to train on."""
    from .evaluation.records import read_records

    try:
        records = read_records(data, limit)
    except ValueError as e:
        raise ValueError(f"the training data {data}: {e}") from e
    if len(records) < val + batch_size:
        raise ValueError(f"found {len(records)} usable records in {data}{f' (first {limit})' if limit else ''}: "
                         f"too few to hold out {val} for validation and train on batches of {batch_size} "
                         f"(need at least {val + batch_size})")
    return records


def _order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def batch_at(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices into the training records of step `step`'s batch (epoch e in order `seed + 1 + e`)."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    orders = {e: _order(n, seed + 1 + e) for e in {i // n for i in positions}}     # the epochs this batch spans
    return [int(orders[i // n][i % n]) for i in positions]


def train_editor(
    method: str, model: Any, data: str | Path, *, steps: int = 1000, limit: int | None = None,
    layers: list[int] | None = None, params: Any = None, batch_size: int = 10, val: int = 50, val_every: int = 100,
    patience: int = 5, grad_clip: float = 100.0, seed: int = 0, resume: bool = True, progress: bool = True,
) -> dict[str, Any]:
    """Train `method`'s editor for `model` on `data`; returns the checkpoint's provenance (with
    "path"). A finished checkpoint with the same settings is returned as it is; an interrupted run
    is resumed, and one interrupted with other settings is refused, showing the difference
    (`resume=False` discards it and starts over). `layers`: the method's default when None."""
    model = as_model(model)
    m = get(method)
    if not m.trained:
        raise ValueError(f"{method} does not learn to edit: trained methods are {[n for n in names() if get(n).trained]}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("val", val), ("val_every", val_every),
                        ("patience", patience)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    params = params if params is not None else m.Params()
    layers = list(layers) if layers is not None else m.default_layers(model, None)
    records = training_records(data, limit, val, batch_size)
    held = _order(len(records), seed)
    val_records = [records[int(i)] for i in held[:val]]
    train_records = [records[int(i)] for i in held[val:]]
    settings = {"params": params.to_dict(), "data": {"file": Path(data).name, "sha256": file_sha256(data),
                                                      "limit": limit, "records": len(records)},
                "training": {"batch_size": batch_size, "val": val, "val_every": val_every, "patience": patience,
                             "grad_clip": grad_clip, "seed": seed}}
    weights = model_weights_hash(model)
    stem = checkpoint_stem(model, method, layers, settings["data"]["sha256"], settings, weights)
    partial = stem.with_name(stem.name + "-partial")
    meta = {"method": method, "model": model.name, "weights": weights, "layers": layers, **settings}
    for other in stem.parent.glob(f"{stem.name.rsplit('-', 1)[0]}-*-partial.json"):
        if other.name != partial.name + ".json":  # an interrupted run of this data with other settings
            if resume:
                _same_settings(json.loads(other.read_text()), settings, other.with_suffix(""))
            for suffix in (".json", ".safetensors"):
                other.with_suffix(suffix).unlink(missing_ok=True)
    if resume and stem.with_suffix(".json").is_file():
        _, done = read_checkpoint(stem)
        return {**done, "path": str(stem)}

    torch.manual_seed(seed)
    editor = m.init_editor(model, layers, params, train_records).to(model.device)
    opt = torch.optim.Adam(m.optimizer_groups(editor, params))
    start, history, best = 0, [], {"score": float("-inf"), "step": 0}
    best_state = copy.deepcopy(editor.state_dict())
    if resume and partial.with_suffix(".json").is_file():
        tensors, saved = read_checkpoint(partial)
        editor.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("editor.")})
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        opt.load_state_dict(_optimizer_state(opt, tensors))
        start, history, best = saved["step"], saved["history"], saved["best"]
    rank, world = dist.rank(), dist.world_size()
    t0, seconds_before = time.perf_counter(), (history[-1]["seconds"] if history else 0.0)
    from tqdm.auto import tqdm

    bar = tqdm(range(start, steps), desc=f"train {method}", disable=not progress or rank != 0, initial=start,
               total=steps)
    stale = sum(h["step"] > best["step"] for h in history)  # validations since the best (when resumed)
    with weights_require_grad(model, False):
        for step in bar:
            editor.train()
            mine = [train_records[i] for j, i in enumerate(batch_at(step, batch_size, len(train_records), seed))
                    if j % world == rank]
            loss, figures = m.training_loss(model, editor, layers, mine, params)
            loss_value = float(loss.detach()) / max(1, len(mine))
            grads = torch.autograd.grad(loss / batch_size, [p for p in editor.parameters()], allow_unused=True)
            for p, g in zip(editor.parameters(), grads):
                p.grad = dist.reduce_sum_(g if g is not None else torch.zeros_like(p))
            torch.nn.utils.clip_grad_norm_(editor.parameters(), grad_clip)
            opt.step()
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if (step + 1) % val_every == 0 or step + 1 == steps:
                score, scores = _validate(m, model, editor, layers, val_records, params, rank, world)
                history.append({"step": step + 1, "loss": loss_value, **figures, "score": score, **scores,
                                "seconds": seconds_before + time.perf_counter() - t0})
                if score > best["score"]:
                    best, best_state, stale = {"score": score, "step": step + 1}, copy.deepcopy(editor.state_dict()), 0
                else:
                    stale += 1
                _write(partial, rank, {**meta, "status": "running", "step": step + 1, "history": history, "best": best},
                       {**{f"editor.{k}": v for k, v in editor.state_dict().items()},
                        **{f"best.{k}": v for k, v in best_state.items()}, **_optimizer_tensors(opt)})
                if stale >= patience:
                    break
    final = {**meta, "status": "finished", "step": history[-1]["step"] if history else start, "history": history,
             "best": best, "world_size": world, "created": time.time()}
    _write(stem, rank, final, best_state)
    if rank == 0:
        for suffix in (".json", ".safetensors"):
            partial.with_suffix(suffix).unlink(missing_ok=True)
    return {**final, "path": str(stem)}


@torch.no_grad()
def _validate(m, model: Model, editor, layers, records, params, rank: int, world: int) -> tuple[float, dict]:
    """Each of the method's `val_metrics` averaged over the held-out records, and their mean."""
    editor.eval()
    mine = records[rank::world]
    rows = m.validate(model, editor, layers, mine, params) if mine else []
    sums = torch.tensor([[r[k] for k in m.val_metrics] for r in rows], dtype=torch.float64)
    sums = dist.reduce_sum_(sums.reshape(-1, len(m.val_metrics)).sum(0))
    means = {k: float(v) / len(records) for k, v in zip(m.val_metrics, sums)}
    return sum(means.values()) / len(means), means


def _write(stem: Path, rank: int, meta: dict, tensors: dict) -> None:
    if rank == 0:
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(stem, {k: v.detach().cpu() for k, v in tensors.items()}, meta)
    if dist.is_distributed():
        torch.distributed.barrier()


def _same_settings(saved: dict, settings: dict, where: Path) -> None:
    diff = {f"{group}.{k}": (saved.get(group, {}).get(k), v) for group, values in settings.items()
            for k, v in values.items() if _plain(saved.get(group, {}).get(k)) != _plain(v)}
    if diff:
        shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{where} was trained with other settings ({shown}): resume with the saved ones, or pass "
                         "resume=False (--restart) to start over")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            out[f"adam.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    state = opt.state_dict()
    saved: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("adam."):
            _, i, k = name.split(".", 2)
            saved.setdefault(int(i), {})[k] = v
    state["state"] = saved
    return state
