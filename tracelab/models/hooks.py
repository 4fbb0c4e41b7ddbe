"""One small hook mechanism: read or rewrite named sites during a forward pass.

A `Site` is a named place in the model (`blocks.3.mlp_out`) bound to a module and to either
its output or its input. `intervene` runs a function on the tensor at each site and, if the
function returns a tensor, uses it instead; `record` and `patch` are built on it. Hooks are
removed on exit, also on error. Several contexts on one site run in the order they were
entered (to record a patched value, enter the patch first).

    >>> with record(model, [model.resid(3), model.mlp_key(5)]) as cache:
    ...     model.hf(ids)
    >>> cache["blocks.3.resid"].shape              # [batch, pos, d_model]
    >>> with patch(model, {model.resid(3): replace(clean, positions=[4])}):
    ...     logits = model.hf(ids).logits
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Mapping, Sequence

import torch

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Site:
    """A named tensor in the forward pass: the output (or first input) of one module.

    `name` is self-explaining (`embed`, `blocks.{l}.resid`, `blocks.{l}.attn_out`,
    `blocks.{l}.mlp_out`, `blocks.{l}.mlp_key`); `module` is its dotted path in the HF model;
    `io` is "output" or "input". Shape of the tensor: `[batch, pos, width]`. A "call" site
    (`blocks.{l}.mlp`: the MLP as a function) is for patches only: `fn(input, output) -> output`.
    """

    name: str
    module: str
    io: str = "output"
    layer: int | None = None

    def __str__(self) -> str:
        return self.name


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (caught by `intervene`)."""


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _with_first(value, tensor):
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


def site_view(x: torch.Tensor, batch: int, pos: int) -> torch.Tensor:
    """The tensor at a site as `[batch, pos, width]`: some blocks (OPT) run their MLP on flattened
    `[batch·pos, width]` rows, viewed back here (sharing storage; other tensors as they are)."""
    return x.view(batch, pos, x.shape[-1]) if x.dim() == 2 and x.shape[0] == batch * pos else x


class _Hooks:
    """Forward hooks at sites that show every site as `[batch, pos, width]` (the shape is noted
    from the embedding's output in each forward pass); `remove()` takes them all out."""

    def __init__(self, model) -> None:
        self.model, self.handles, self.batch_pos = model, [], None

        def note_shape(module, args, output):
            self.batch_pos = tuple(output.shape[:2])

        self.handles.append(model.hf.get_submodule(model.arch.embed).register_forward_hook(note_shape))

    def _call(self, fn: SiteFn, x: torch.Tensor):
        view = site_view(x, *self.batch_pos) if self.batch_pos else x
        new = fn(view)
        return new if new is None or view is x else new.reshape(x.shape)

    def add(self, site: Site, fn: SiteFn | None, stop: bool = False) -> None:
        def after(value, fn=fn):
            if fn is not None:
                new = self._call(fn, _first(value))
                if new is not None:
                    value = _with_first(value, new)
            if stop:
                raise StopForward
            return value

        def call(module, args, output):  # fn(input, output) -> output, both [batch, pos, width]
            x = site_view(_first(args), *self.batch_pos) if self.batch_pos else _first(args)
            return after(output, None if fn is None else lambda y: fn(x, y))

        module = self.model.hf.get_submodule(site.module)
        if site.io == "output":
            self.handles.append(module.register_forward_hook(lambda module, args, output: after(output)))
        elif site.io == "call":
            self.handles.append(module.register_forward_hook(call))
        else:
            self.handles.append(module.register_forward_pre_hook(lambda module, args: after(args)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install(model, site: Site, fn: SiteFn):
    """Run `fn` at `site` in every forward pass until `.remove()` is called on the returned handle
    (what a `HookPatch` does while applied; `intervene` is the scoped form).

        >>> handle = install(model, model.mlp_out(5), lambda x: x + v)
        >>> handle.remove()
    """
    hooks = _Hooks(model)
    hooks.add(site, fn)
    return hooks


@contextmanager
def intervene(
    model, fns: Mapping[Site, SiteFn], *, stop_after: Site | None = None, native: bool = True
) -> Iterator[None]:
    """Call `fns[site](tensor)` at each site; a returned tensor replaces the site's value.

        >>> with intervene(model, {model.embed: lambda x: x + noise}):
        ...     out = model.hf(ids)

    `stop_after`: end the forward pass right after that site, to collect early states cheaply.
    As in baukit, the stop is caught when the `with` block exits, so the statements after the
    forward call in the block do not run: make the forward call the block's last statement.
    `native`: the block runs in `model.native()` (the transformers modules beneath a bridge);
    False where the block runs the user's own calls through their wrapper (`steer`).
    """
    sites = dict(fns)
    if stop_after is not None:
        sites.setdefault(stop_after, None)
    hooks = _Hooks(model)
    try:
        for site, fn in sites.items():
            hooks.add(site, fn, stop=site == stop_after)
        try:
            with model.native() if native else nullcontext():
                yield
        except StopForward:
            pass
    finally:
        hooks.remove()


@contextmanager
def record(
    model, sites: Sequence[Site], *, detach: bool = True, stop: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensor at each site, keyed by site name (baukit's TraceDict, for sites).

        >>> with record(model, [model.resid(0)]) as cache:
        ...     model.hf(ids)
        >>> cache["blocks.0.resid"]                # [batch, pos, d_model]

    `stop=True` ends the forward pass after the deepest recorded site in the model's order of
    execution (only layers up to it run). With `detach=False` gradients flow through the record.
    """
    cache: dict[str, torch.Tensor] = {}
    calls = [s.name for s in sites if s.io == "call"]
    if calls:
        raise ValueError(f"{calls} are the MLP as a function (input, output), for patches: record "
                         "blocks.<l>.mlp_out for its output")

    def keep(name: str) -> SiteFn:
        def fn(x: torch.Tensor) -> None:
            cache[name] = x.detach() if detach else x

        return fn

    fns = {site: keep(site.name) for site in sites}
    stop_after = max(sites, key=_depth) if stop and sites else None
    with intervene(model, fns, stop_after=stop_after):
        yield cache


def _depth(site: Site) -> tuple[int, int]:
    """Order of execution of sites: embed first, then by layer; within a layer the block output last."""
    if site.layer is None:
        return (-1, 0)
    return (site.layer, 1 if site.name.endswith(".resid") else 0)


def _index(x: torch.Tensor, rows, positions):
    rows = slice(None) if rows is None else torch.as_tensor(rows, device=x.device)
    positions = slice(None) if positions is None else torch.as_tensor(positions, device=x.device)
    if isinstance(rows, torch.Tensor) and isinstance(positions, torch.Tensor):
        return rows[:, None], positions[None, :]
    return rows, positions


def replace(values: torch.Tensor, *, positions=None, rows=None) -> SiteFn:
    """A patch that writes `values` into the site at `[rows, positions]` (default: all).

    `values` broadcasts to `x[rows][:, positions]`, e.g. `[n_rows, n_pos, d]` or `[d]`.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        r, p = _index(x, rows, positions)
        x[r, p] = values.to(device=x.device, dtype=x.dtype)
        return x

    return fn


def add(vector: torch.Tensor, *, positions=None, rows=None) -> SiteFn:
    """A patch that adds `vector` (broadcast, e.g. `[d]`) to the site at `[rows, positions]`."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        r, p = _index(x, rows, positions)
        x[r, p] = x[r, p] + vector.to(device=x.device, dtype=x.dtype)
        return x

    return fn


def patch(model, patches: Mapping[Site, SiteFn], *, native: bool = True) -> ContextManager[None]:
    """Rewrite sites for the forward passes inside the `with` block.

        >>> with patch(model, {model.mlp_out(5): replace(clean_mlp[:, 3], positions=[3])}):
        ...     logits = model.hf(ids).logits
    """
    return intervene(model, patches, native=native)
