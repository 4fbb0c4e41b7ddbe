"""Transactions: a method's changes applied together, and reverted together if anything fails.

    >>> with transaction(model) as tx:
    ...     tx.apply(ParamDelta.mlp_out(model, 3, update))   # a method's layer loop (MEMIT)
    ...     with tx.trial(change): ok = says_target(...)     # applied only inside the block

An edit that fails, or that makes a weight non-finite, changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..models import Model
from .changes import Change, ParamDelta


class Transaction:
    """Applies changes to `model` and remembers them, so that all can be reverted together.

        >>> with transaction(model) as tx:
        ...     tx.apply(ParamDelta.mlp_out(model, 3, update))   # a method's layer loop (MEMIT)
        ...     with tx.trial(change): ok = says_target(...)     # applied only inside the block
    """

    def __init__(self, model: Model) -> None:
        self.model, self.changes = model, []

    def apply(self, change: Change) -> Change:
        change.apply(self.model)
        self.changes.append(change)
        if isinstance(change, ParamDelta) and not torch.isfinite(self.model.parameter(change.name)).all():
            raise ValueError(f"the edit made {change.name} non-finite; no weight was changed")
        return change

    @contextmanager
    def trial(self, change: Change) -> Iterator[Change]:
        """`change` applied inside the block only; the model is exactly as before afterwards."""
        change.apply(self.model)
        try:
            yield change
        finally:
            change.revert(self.model)

    def revert_all(self) -> None:
        for c in reversed(self.changes):
            if c.applied:
                c.revert(self.model)
        self.changes = []


@contextmanager
def transaction(model: Model) -> Iterator[Transaction]:
    """A `Transaction`: if the block raises, every change it applied is reverted (no weight changed)."""
    tx = Transaction(model)
    try:
        yield tx
    except BaseException:
        tx.revert_all()
        raise
