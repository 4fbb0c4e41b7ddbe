"""Modules that `HookPatch` changes install at a site, and the shared form memory methods need.

    >>> @register_patch
    ... class AddVector(PatchModule):
    ...     def __init__(self, width: int): super().__init__(); self.v = nn.Parameter(torch.zeros(width))
    ...     def forward(self, x): return x + self.v                     # x: [batch, pos, width]
    ...     def config(self): return {"width": self.v.numel()}
    >>> handle = attach(model, model.site("blocks.5.mlp_out"), AddVector(576)); handle.remove()

Most patches stack: each runs on what the one before it returned. A codebook cannot (GRACE: the
nearest key wins, and each key must see the layer's own activation, not another entry's value),
and hundreds of small patches run faster as one (T-Patcher's neurons: one matmul, not one hook each),
so a `PatchModule` class with `shared = True` runs as one member of a `PatchGroup`: one hook per
(model, site, class) that calls `cls.forward_group(x, members, cache)` on all members at once (`cache`: a dict emptied
whenever a member joins or leaves, for what depends on the members only). A member
joins when its change is applied and leaves when it is reverted; the hook goes when the last leaves.
A class with `reads_mask = True` finds the running forward pass's attention mask `[batch, pos]`
in `cache["attention_mask"]` (None when the caller gave none): what a patch that judges a whole
row needs, so that padding never decides (WISE's router).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ..models import Model
from ..models.hooks import Site, install


class PatchModule(nn.Module):
    """A module a `HookPatch` installs at a site: `forward(x [batch, pos, width]) -> x'`.

    `config()` gives the keyword arguments that rebuild it (saved as JSON; its tensors come from
    `state_dict`). Register subclasses with `register_patch` so a saved journal can rebuild them.
    `shared = True`: instances at one site run together through `forward_group` (see the module doc).
    """

    shared: ClassVar[bool] = False
    reads_mask: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def forward_group(cls, *args) -> torch.Tensor | None:
        """(x, members, cache), or (input, output, members, cache) at a call site → the new tensor or None."""
        raise NotImplementedError(f"{cls.__name__} sets shared = True and must define forward_group")


PATCH_MODULES: dict[str, type[PatchModule]] = {}


def register_patch(cls: type[PatchModule]) -> type[PatchModule]:
    """Make a `PatchModule` class loadable by name (a decorator)."""
    PATCH_MODULES[cls.__name__] = cls
    return cls


class PatchGroup:
    """The members of one shared patch class at one site, run by one hook."""

    def __init__(self, model: Model, site: Site, cls: type[PatchModule]) -> None:
        self.cls, self.members, self.cache, self.bypassed = cls, [], {}, False
        self.handle = install(model, site, self)
        self.mask_hook = model.hf.register_forward_pre_hook(self._note_mask, with_kwargs=True) if cls.reads_mask else None

    def _note_mask(self, module, args, kwargs) -> None:
        self.cache["attention_mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def remove(self) -> None:
        self.handle.remove()
        if self.mask_hook is not None:
            self.mask_hook.remove()

    def join(self, module: PatchModule) -> None:
        self.members.append(module)
        self.cache.clear()

    def leave(self, module: PatchModule) -> None:
        self.members.remove(module)
        self.cache.clear()

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor | None:  # x, or (input, output) at a call site
        return None if self.bypassed or not self.members else self.cls.forward_group(*tensors, self.members, self.cache)


_GROUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hf model -> {(site, class): PatchGroup}


def group(model: Model, site: Site, cls: type[PatchModule]) -> PatchGroup | None:
    """The group of `cls` patches at `site` of `model`, if any is applied."""
    return _GROUPS.get(model.hf, {}).get((site.name, cls))


class _Member:
    def __init__(self, groups: dict, key: tuple, module: PatchModule) -> None:
        self.groups, self.key, self.module = groups, key, module

    def remove(self) -> None:
        g = self.groups[self.key]
        g.leave(self.module)
        if not g.members:
            g.remove()
            del self.groups[self.key]


def attach(model: Model, site: Site, module: PatchModule):
    """Run `module` at `site` in every forward pass until `.remove()` on the returned handle; a
    shared module joins its site's group (created on the first member)."""
    if not type(module).shared:
        return install(model, site, module)
    groups = _GROUPS.setdefault(model.hf, {})
    key = (site.name, type(module))
    if key not in groups:
        groups[key] = PatchGroup(model, site, type(module))
    groups[key].join(module)
    return _Member(groups, key, module)


@contextlib.contextmanager
def bypassed(model: Model, site: Site, cls: type[PatchModule]) -> Iterator[None]:
    """The site as if no `cls` patch were applied there (what a new codebook key must be read from)."""
    g = group(model, site, cls)
    if g is None:
        yield
        return
    g.bypassed = True
    try:
        yield
    finally:
        g.bypassed = False
