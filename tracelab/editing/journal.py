"""The journal: every change tracelab makes to a model, in order, undoable bit for bit.

    >>> e = tracelab.edit(model, subject="The Eiffel Tower", prompt="{} is in", target="Rome")
    >>> journal(model).edits[-1] is e
    True
    >>> with journal(model).suspended():         # the unedited model, whatever kinds of change
    ...     base = model.predict("The Eiffel Tower is in")
    >>> journal(model).save("edits/")            # changes (safetensors) + JSON, with hashes
    >>> e.undo()                                 # or journal(model).undo_all()
    >>> Journal.load("edits/").apply(fresh_model)  # replay, checking every hash

An `Edit` is one call of a method: its requests, layers, hyperparameters and `changes` (see
`changes`), applied through a `transaction.Transaction`. `EditDelta` is the edits' weight
changes as one vector that adds, scales, negates and applies to another copy of the same base
(task arithmetic, Ilharco et al. 2023): `journal(model).as_delta()`.
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
from .changes import FORMAT, Change, ParamDelta, load_change
from .requests import Request
from .transaction import transaction


@dataclass(eq=False)
class Edit:
    """One applied edit: its method, requests, layers, hyperparameters and changes.

        >>> e = tracelab.edit(model, subject="Lyon", prompt="{} is in", target="Italy")
        >>> e.method, e.layers, e.info["norms"]       # 'rome', [5], {5: 12.3}
        >>> e.changes                                 # [ParamDelta('model.layers.5.mlp.down_proj.weight')]
        >>> e.undo()

    `info` holds timings, norms and per-request losses; `changes` the `Change`s in the order they
    were applied (`deltas`: the `ParamDelta`s among them). An edit with no changes is a no-op
    (e.g. the model already gave the target).
    """

    method: str
    requests: list[Request]
    layers: list[int]
    hparams: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    _journal: Any = field(default=None, repr=False, compare=False)

    @property
    def deltas(self) -> list[ParamDelta]:
        return [c for c in self.changes if isinstance(c, ParamDelta)]

    @property
    def applied(self) -> bool:
        return any(c.applied for c in self.changes)

    def undo(self) -> None:
        """Revert this edit's changes (ValueError if a later edit changed the same things)."""
        if not self.changes:
            return  # a no-op edit
        if self._journal is None:
            raise ValueError("this edit is not in a model's journal (never applied, or loaded from disk)")
        self._journal.undo(self)

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "requests": [r.to_dict() for r in self.requests],
                "layers": self.layers, "hparams": self.hparams, "info": _jsonable(self.info),
                "created": self.created, "changes": [c.record() for c in self.changes]}

    def save(self, path: str | Path) -> Path:
        """`<path>.safetensors` (every change's tensors and state) + `<path>.json` (the rest)."""
        tensors = {}
        for i, c in enumerate(self.changes):
            tensors.update({f"change.{i}.{k}": v for k, v in c.tensors().items()})
            tensors.update({f"change.{i}.state.{k}": v for k, v in c.state.items()})
        return save_tensors(path, tensors, self.meta())

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """A detached edit (not applied); every change's tensors are checked against its saved hash."""
        tensors, meta = _read(path)
        changes = []
        for i, record in enumerate(meta["changes"]):
            prefix = f"change.{i}."
            own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            changes.append(load_change(record, own))
        return cls(meta["method"], [Request(**r) for r in meta["requests"]], meta["layers"], meta["hparams"],
                   changes, meta["info"], meta["created"])


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A saved edit's tensors and JSON, with a clear error for files this version cannot read."""
    try:
        tensors, meta = load_tensors(path)
    except (OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"cannot read the saved edit at {path}: {e}") from e
    _check_format(meta.get("format", 1), path)
    return tensors, meta


def _check_format(found: int, where) -> None:
    if found == FORMAT:
        return
    if found > FORMAT:
        raise ValueError(f"{where} was saved by a newer tracelab (format {found}; this one reads format {FORMAT}): "
                         "upgrade tracelab to read it")
    raise ValueError(f"{where} is in format {found} (dense MLP-output deltas, before the Change records); this "
                     f"tracelab reads format {FORMAT}: redo the edits and save them again")


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
        >>> j.undo_all()                 # newest first; the model is back to its base, bit for bit
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
        """Undo one edit. Refused (ValueError, nothing changed) when a later edit changed a weight
        this one changed: undo that one first (or `undo_all`). Hooks and prompt contexts come out of
        the middle of a stream exactly (`Change.reverts_alone`)."""
        if edit not in self.edits:
            raise ValueError("this edit is not in the journal (already undone?)")
        later = self.edits[self.edits.index(edit) + 1:]
        targets = {c.target for c in edit.changes if not c.reverts_alone}
        blocking = sorted(targets & {c.target for e in later for c in e.changes})
        if blocking:
            raise ValueError(
                f"cannot undo this {edit.method} edit: later edit(s) changed the same things ({blocking}); undo "
                "them first, newest first, or call journal(model).undo_all()")
        for c in reversed(edit.changes):
            c.revert(self.model)
        self.edits.remove(edit)
        edit._journal = None

    def undo_all(self) -> None:
        """Undo every edit, newest first: the model is back to its base, bit for bit."""
        while self.edits:
            self.undo(self.edits[-1])

    @contextmanager
    def suspended(self) -> Iterator[Model]:
        """Inside the block the model is unedited (every kind of change taken out), afterwards
        exactly as before: for statistics of the base model, "pre" scores, preserved keys."""
        changes = [c for e in self.edits for c in e.changes]
        tokens = []
        try:
            for c in reversed(changes):
                tokens.append((c, c.suspend(self.model)))
            yield self.model
        finally:
            for c, token in reversed(tokens):
                c.resume(self.model, token)

    def state(self, method: str, key: str) -> dict[int, torch.Tensor]:
        """Method state saved by the applied edits of `method`, per layer, concatenated:
        `{layer: [n, ...]}` (AlphaEdit's preserved keys K_p are `state("alphaedit", "keys")`)."""
        out: dict[int, list[torch.Tensor]] = {}
        for e in self.edits:
            if e.method == method:
                for c in e.changes:
                    if key in c.state:
                        out.setdefault(getattr(c, "layer", None), []).append(c.state[key])
        return {l: torch.cat(ts) for l, ts in out.items()}

    def as_delta(self) -> EditDelta:
        """The weight changes of every applied edit as one `EditDelta` (their sum per parameter);
        ValueError if an edit changed more than weights (a hook or a prompt context)."""
        other = [c.target for e in self.edits for c in e.changes if not isinstance(c, ParamDelta)]
        if other:
            raise ValueError(f"as_delta sums weight changes, but edits here also changed {sorted(set(other))} "
                             "(hooks or prompt contexts), which are not weights")
        deltas, base, result = {}, {}, {}
        for c in (c for e in self.edits for c in e.changes):
            deltas[c.name] = deltas.get(c.name, 0) + c.delta
            base.setdefault(c.name, c.hash_before)
            result[c.name] = c.hash_after
        return EditDelta(deltas, base, result)

    def save(self, directory: str | Path) -> Path:
        """Write each edit (`edit-000.safetensors/.json`) and `journal.json` (the order) to `directory`."""
        directory = Path(directory)
        names = [self.edits[i].save(directory / f"edit-{i:03d}").name for i in range(len(self.edits))]
        meta = {"format": FORMAT, "model": getattr(self.model, "name", None), "edits": names}
        atomic_write(directory / "journal.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Journal:
        """A detached journal read from `directory` (hashes of every change checked); `.apply(model)` replays it."""
        directory = Path(directory)
        if not (directory / "journal.json").is_file():
            raise FileNotFoundError(f"no journal at {directory} (expected {directory}/journal.json from Journal.save)")
        try:
            meta = json.loads((directory / "journal.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{directory}/journal.json is not valid JSON ({e})") from e
        _check_format(meta.get("format", 1), directory / "journal.json")
        j = cls()
        j.edits = [Edit.load(directory / name) for name in meta["edits"]]
        return j

    def apply(self, model: Model) -> Journal:
        """Replay these edits on `model`, oldest first: each change must fit the model as it is
        (name, shape, the hash of what it touches) and produce what it produced when it was made.
        ValueError, and nothing changed, on any mismatch. Returns the model's journal."""
        model = as_model(model)
        target = journal(model)
        done: list[Edit] = []
        try:
            for e in self.edits:
                with transaction(model) as tx:
                    for c in e.changes:
                        produced = c.hash_after
                        c.check(model)
                        tx.apply(c)
                        if produced and c.hash_after != produced:
                            raise ValueError(f"replaying the {e.method} edit gave {c.target} hash {c.hash_after}, "
                                             f"not {produced} as when it was made; nothing was applied")
                done.append(target.record(Edit(e.method, e.requests, e.layers, e.hparams, list(e.changes),
                                               dict(e.info), e.created)))
        except Exception:
            for edit in reversed(done):
                target.undo(edit)
            raise
        return target


@dataclass
class EditDelta:
    """Edits as a vector of weight changes (task arithmetic, Ilharco et al. 2023, on edits).

        >>> v = journal(edited).as_delta()          # {name: ΔW}, the sum of every applied ParamDelta
        >>> (v + w).apply(copy)                     # both edits on another copy of the same base
        >>> (-v).apply(edited)                      # remove them (up to float rounding)
        >>> (0.5 * v).apply(copy)

    `deltas` {parameter name: ΔW} (float32, the parameter's layout); `base` {name: the hash of
    the weight ΔW applies to}; `result` {name: the hash it produced} (known only for a vector
    read off a journal). `apply` checks every base hash first: a delta of one base model does not
    go onto another (ValueError, nothing changed). Vectors of different bases do not add.
    """

    deltas: dict[str, torch.Tensor]
    base: dict[str, str]
    result: dict[str, str | None] = field(default_factory=dict)

    def __add__(self, other: EditDelta) -> EditDelta:
        if not isinstance(other, EditDelta):
            return NotImplemented
        clash = [n for n in self.base.keys() & other.base.keys() if self.base[n] != other.base[n]]
        if clash:
            raise ValueError(f"these edit vectors start from different weights for {sorted(clash)[:3]} (hashes "
                             f"{[self.base[n] for n in sorted(clash)[:3]]} vs {[other.base[n] for n in sorted(clash)[:3]]}): "
                             "they are not deltas of one base model")
        names = list(dict.fromkeys([*self.deltas, *other.deltas]))
        deltas = {n: self.deltas.get(n, 0) + other.deltas.get(n, 0) for n in names}
        return EditDelta(deltas, {**other.base, **self.base}, {n: None for n in names})

    def __mul__(self, scale: float) -> EditDelta:
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            return NotImplemented
        return EditDelta({n: scale * d for n, d in self.deltas.items()}, dict(self.base), {n: None for n in self.deltas})

    __rmul__ = __mul__

    def __neg__(self) -> EditDelta:
        """−v applies to the weights v produced (its result) and takes them back to its base."""
        missing = [n for n in self.deltas if not self.result.get(n)]
        if missing:
            raise ValueError(f"−v needs the weights v produced, known only for a vector read off a journal "
                             f"(journal(model).as_delta()); missing for {missing[:3]}")
        return EditDelta({n: -d for n, d in self.deltas.items()}, dict(self.result), dict(self.base))

    def __sub__(self, other: EditDelta) -> EditDelta:
        return self + (-1.0) * other

    def apply(self, model: Model) -> Edit:
        """Add these deltas to `model`'s weights, recorded in its journal (undoable) as an
        "arithmetic" edit. ValueError, nothing changed, when a weight is not the base it expects."""
        model = as_model(model)
        changes = [ParamDelta.build(model, n, d) for n, d in self.deltas.items()]
        for c in changes:
            c.hash_before = self.base[c.name]
            c.check(model)
        with transaction(model) as tx:
            for c in changes:
                tx.apply(c)
        return journal(model).record(Edit("arithmetic", [], [], {"base": self.base}, changes))


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
