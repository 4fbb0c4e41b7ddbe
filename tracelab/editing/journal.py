"""The journal: every weight change tracelab makes to a model, in order, undoable bit for bit.

    >>> e = tracelab.edit(model, subject="The Eiffel Tower", prompt="{} is in", target="Rome")
    >>> journal(model).edits[-1] is e
    True
    >>> journal(model).save("edits/")            # deltas (safetensors) + journal.json
    >>> e.undo()                                 # or journal(model).undo_all()
    >>> Journal.load("edits/").apply(fresh_model)  # replay (checks the base weight hashes)
"""

from __future__ import annotations

import json
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..io import atomic_write, load_tensors, save_tensors
from ..models import Model
from ..models.loading import as_model
from .delta import WeightDelta, tensor_hash
from .requests import Request


@dataclass(eq=False)
class Edit:
    """One applied edit: its method, requests, layers, hyperparameters and weight deltas.

        >>> e = tracelab.edit(model, subject="Lyon", prompt="{} is in", target="Italy")
        >>> e.method, e.layers, e.info["norms"]       # 'rome', [5], {5: 12.3}
        >>> e.undo()

    `info` holds norms, timings (k*, v*/z optimisation, solve) and per-request losses;
    `deltas` the `WeightDelta`s in the order they were applied. An edit with no deltas is a
    no-op (e.g. the model already gave the target).
    """

    method: str
    requests: list[Request]
    layers: list[int]
    hparams: dict[str, Any]
    deltas: list[WeightDelta] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    created: float = field(default_factory=time.time)
    _journal: Any = field(default=None, repr=False, compare=False)

    @property
    def applied(self) -> bool:
        return any(d.original is not None for d in self.deltas)

    def undo(self) -> None:
        """Restore the weights this edit changed (ValueError if a later edit changed them too)."""
        if not self.deltas:
            return  # a no-op edit
        if self._journal is None:
            raise ValueError("this edit is not in a model's journal (never applied, or loaded from disk)")
        self._journal.undo(self)

    def meta(self) -> dict[str, Any]:
        return {
            "method": self.method, "requests": [r.to_dict() for r in self.requests], "layers": self.layers,
            "hparams": self.hparams, "info": _jsonable(self.info), "created": self.created,
            "deltas": [{"layer": d.layer, "name": d.name, "hash_before": d.hash_before,
                        "hash_after": d.hash_after, "norm": d.norm} for d in self.deltas],
        }

    def save(self, path: str | Path) -> Path:
        """`<path>.safetensors` (the deltas) + `<path>.json` (everything else)."""
        tensors = {f"delta.{i}": d.delta for i, d in enumerate(self.deltas)}
        tensors.update({f"keys.{l}": k for l, k in self.keys.items()})
        return save_tensors(path, tensors, self.meta())

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        tensors, meta = load_tensors(path)
        deltas = [WeightDelta(m["layer"], m["name"], tensors[f"delta.{i}"], None, m["hash_before"], m["hash_after"])
                  for i, m in enumerate(meta["deltas"])]
        keys = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("keys.")}
        return cls(meta["method"], [Request(**r) for r in meta["requests"]], meta["layers"], meta["hparams"],
                   deltas, meta["info"], keys, meta["created"])


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class Journal:
    """The ordered list of edits applied to one model (`journal(model)` gives it).

        >>> j = journal(model)
        >>> j.edits                      # applied edits, oldest first
        >>> j.undo_all()                 # newest first; weights back bit for bit
        >>> j.save("dir"); Journal.load("dir").apply(other_model)
    """

    def __init__(self, model: Model | None = None) -> None:
        self._model = weakref.ref(model) if model is not None else None
        self.edits: list[Edit] = []

    @property
    def model(self) -> Model | None:
        return self._model() if self._model is not None else None

    def __len__(self) -> int:
        return len(self.edits)

    def __repr__(self) -> str:
        return f"Journal({len(self.edits)} edits: {[e.method for e in self.edits]})"

    def record(self, edit: Edit) -> Edit:
        edit._journal = self
        self.edits.append(edit)
        return edit

    def undo(self, edit: Edit) -> None:
        """Undo one edit. Refused (ValueError, nothing changed) when a later edit changed one of
        the same weights: undo that one first (or `undo_all`)."""
        if edit not in self.edits:
            raise ValueError("this edit is not in the journal (already undone?)")
        later = self.edits[self.edits.index(edit) + 1:]
        names = {d.name for d in edit.deltas}
        blocking = [e for e in later if names & {d.name for d in e.deltas}]
        if blocking:
            raise ValueError(
                f"cannot undo this {edit.method} edit: {len(blocking)} later edit(s) changed the same weights "
                f"({sorted(names & {d.name for e in blocking for d in e.deltas})}); undo them first, newest "
                "first, or call journal(model).undo_all()"
            )
        for d in reversed(edit.deltas):
            d.revert(self.model)
        self.edits.remove(edit)
        edit._journal = None

    def undo_all(self) -> None:
        """Undo every edit, newest first: the model's weights are back to the base, bit for bit."""
        while self.edits:
            self.undo(self.edits[-1])

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """Inside the block the model has its unedited weights (for statistics of the base model)."""
        model = self.model
        originals: dict[str, tuple[WeightDelta, torch.Tensor]] = {}
        for e in self.edits:
            for d in e.deltas:
                if d.name not in originals:
                    originals[d.name] = (d, model.mlp_out_weight(d.layer).param.data.clone())
        try:
            for d, _ in originals.values():
                model.mlp_out_weight(d.layer).param.data.copy_(d.original)
            yield
        finally:
            for d, current in originals.values():
                model.mlp_out_weight(d.layer).param.data.copy_(current)

    def past_keys(self, method: str) -> dict[int, torch.Tensor]:
        """Keys written by the applied edits of `method`, per layer: `{layer: [n, d_mlp]}` (AlphaEdit's K_p)."""
        out: dict[int, list[torch.Tensor]] = {}
        for e in self.edits:
            if e.method == method:
                for l, k in e.keys.items():
                    out.setdefault(l, []).append(k)
        return {l: torch.cat(ks) for l, ks in out.items()}

    def save(self, directory: str | Path) -> Path:
        """Write each edit (`edit-000.safetensors/.json`) and `journal.json` (the order) to `directory`."""
        directory = Path(directory)
        names = [self.edits[i].save(directory / f"edit-{i:03d}").name for i in range(len(self.edits))]
        meta = {"model": getattr(self.model, "name", None), "edits": names}
        atomic_write(directory / "journal.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Journal:
        """A detached journal read from `directory`; `.apply(model)` replays it."""
        directory = Path(directory)
        if not (directory / "journal.json").is_file():
            raise FileNotFoundError(f"no journal at {directory} (expected {directory}/journal.json from Journal.save)")
        meta = json.loads((directory / "journal.json").read_text())
        j = cls()
        j.edits = [Edit.load(directory / name) for name in meta["edits"]]
        return j

    def apply(self, model: Model) -> Journal:
        """Replay these edits on `model`, oldest first, checking that each weight has the hash it had
        when the edit was made. ValueError (and no weight changed) on a mismatch."""
        target = journal(model)
        done: list[Edit] = []
        try:
            for e in self.edits:
                deltas = [WeightDelta(d.layer, d.name, d.delta) for d in e.deltas]
                for old, new in zip(e.deltas, deltas):
                    if model.mlp_out_weight(old.layer).name != old.name:
                        raise ValueError(f"weight {old.name} does not exist in {model.name}")
                    have = tensor_hash(model.mlp_out_weight(old.layer).param.data)
                    if have != old.hash_before:
                        raise ValueError(
                            f"{old.name} of {model.name} has hash {have}, but the {e.method} edit was made on "
                            f"weights with hash {old.hash_before}: load the same base model (and replay the "
                            "journal from its first edit)"
                        )
                    new.apply(model)
                edit = Edit(e.method, e.requests, e.layers, e.hparams, deltas, dict(e.info), e.keys, e.created)
                done.append(target.record(edit))
        except Exception:
            for edit in reversed(done):
                target.undo(edit)
            raise
        return target


_JOURNALS: "weakref.WeakKeyDictionary[Model, Journal]" = weakref.WeakKeyDictionary()


def journal(model: Model) -> Journal:
    """The journal of `model` (created empty on first use).

        >>> journal(model).edits
        []
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if model not in _JOURNALS:
        _JOURNALS[model] = Journal(model)
    return _JOURNALS[model]


@contextmanager
def transaction(model: Model) -> Iterator[list[WeightDelta]]:
    """Collect the deltas an algorithm applies; if it raises, revert them all (no weight changed).

        >>> with transaction(model) as applied:
        ...     d = WeightDelta.build(model, 3, delta); d.apply(model); applied.append(d)
    """
    applied: list[WeightDelta] = []
    try:
        yield applied
    except BaseException:
        for d in reversed(applied):
            if d.original is not None:
                d.revert(model)
        raise
