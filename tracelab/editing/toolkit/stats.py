"""Key statistics: the uncentred second moment C = E[k kᵀ] of MLP keys at a layer, over a corpus.

    >>> s = key_stats(model, 5, tokens=100_000)          # cached; computed once per model/corpus
    >>> s.moment.shape, s.count                          # [d_mlp, d_mlp] float32, tokens used
    >>> stats = key_stats(model, [3, 4, 5])              # several layers in one pass: {layer: KeyStats}

Keys are `mlp_key(l)` (the input of the MLP output projection) at every non-padding token;
the forward pass stops after the deepest layer asked for. Sums accumulate in float32 (or
float64) whatever the model dtype, with `tracelab.kernels.accumulate_second_moment`.
`forward_dtype`: the dtype the forward pass computes in: None (the model's own), bfloat16
(autocast; the keys are upcast before they are accumulated) or "auto" (the default: bfloat16
for a float32 model on a device that multiplies it natively, measured in `benchmarks/stats_bench.py`,
else the model's own: `dtypes.auto_dtype`). It is part of the provenance: a cache computed one way
is never read for the other.

Cache: `<cache_dir>/stats/<model>/<corpus>/layer<l>-<dtype>.{safetensors,json}` holding the
running sum, the token count, how many documents were read, and the provenance (model name, a
hash of the weights up to that layer — of the unedited model —, corpus id and revision, dtype,
the forward's dtype, max length). A cache whose provenance differs is recomputed (with a warning), never used;
writes are atomic and partial sums are saved as they go, so an interrupted run resumes.

Under torch.distributed (`torchrun -m tracelab stats ...`) the ranks split the batches one
process would read (batch i runs on rank i mod world_size), sum their partial moments, and stop
at the same token: the result and its provenance are those of one process, up to float rounding.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ...distributed import is_distributed, rank, reduce_sum_, world_size
from ...dtypes import AUTO, auto_dtype, dtype_name
from ...io import UnreadableFile, load_tensors, save_tensors, slug, tensor_hash
from ...kernels import accumulate_second_moment
from ...models import Model, cache_dir
from ...models.loading import as_model
from ...models.text import padded
from .corpus import Corpus
from .corpus import corpus as get_corpus

DEFAULT_TOKENS = 100_000
# A float32 model's statistics run their forward in bfloat16 (autocast) where the device multiplies
# it natively, summed in float32: 2.3× faster on an AVX-512 BF16 CPU, C within 0.6 % (relative
# Frobenius) and ROME's ES/PS/NS on 100 CounterFact edits unchanged (benchmarks/stats_bench.py).


@dataclass
class KeyStats:
    """E[k kᵀ] of `mlp_key(layer)` over `count` corpus tokens.

        >>> s = key_stats(model, 5)
        >>> s.moment                                     # [d_mlp, d_mlp], float32 or float64
        >>> s.provenance["corpus"], s.count

    `check(model)` raises ValueError if the statistics were computed on other weights.
    """

    layer: int
    moment: torch.Tensor
    count: int
    provenance: dict[str, Any]

    def check(self, model: Model, weights: str | None = None) -> None:
        """ValueError if these statistics are not of `model`'s (unedited) weights at `self.layer`
        (`weights`: their `weights_hash`, when already computed)."""
        want = provenance(model, self.layer, None, self.moment.dtype, weights=weights)
        for key in ("model", "weights"):
            if self.provenance.get(key) != want[key]:
                raise ValueError(
                    f"statistics for layer {self.layer} were computed on {key} {self.provenance.get(key)!r}, "
                    f"but this model has {want[key]!r}: compute them for this model with key_stats(model, "
                    f"{self.layer}) (or `tracelab stats`)"
                )

    def save(self, path: str | Path) -> Path:
        return save_tensors(path, {"moment": self.moment}, {"layer": self.layer, "count": self.count,
                                                            "provenance": self.provenance})

    @classmethod
    def load(cls, path: str | Path) -> KeyStats:
        tensors, meta = load_tensors(path)
        return cls(meta["layer"], tensors["moment"], meta["count"], meta["provenance"])


def weights_hash(model: Model, layer: int) -> str:
    """Hash of every weight that `mlp_key(layer)` depends on: the embedding and blocks 0..layer,
    as they are in the unedited model (edits in the journal are looked through). Each block's
    weights are hashed as a set of storages, without names, so that a wrapper that renames
    modules or adds views of them (a TransformerLens bridge's q/k/v of GPT-2's c_attn) keeps it.

    A weight the journal changed is hashed as its first change found it (`ParamDelta.hash_before`),
    so the cost does not grow with the edits in the journal; only where a change covers part of a
    hashed storage are the edits taken out (`journal.suspended`) to hash it."""
    return weights_hashes(model, [layer])[layer]


def weights_hashes(model: Model, layers: Iterable[int]) -> dict[int, str]:
    """`weights_hash` of each of `layers`, in one pass (each block hashed once)."""
    from ..changes import ParamDelta
    from ..journal import journal

    layers = sorted(set(layers))
    unedited: dict[tuple, str] = {}  # tensor → its hash before the journal's first change to it
    for e in journal(model).edits:
        for c in e.changes:
            if isinstance(c, ParamDelta):
                unedited.setdefault(_tensor_key(model.parameter(c.name)), c.hash_before)
    with torch.no_grad():
        embed, blocks = _hashed_parameters(model, layers[-1])
        keys = {_tensor_key(p) for p in [embed, *(p for block in blocks for p in block)]}
        storages = {k[0] for k in keys}
        if all(k in keys or k[0] not in storages for k in unedited):
            return _digests(embed, blocks, layers, lambda p: unedited.get(_tensor_key(p)) or tensor_hash(p))
        with journal(model).suspended():
            return _digests(embed, blocks, layers, tensor_hash)


def _tensor_key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def _hashed_parameters(model: Model, layer: int) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """The embedding, and per block 0..layer the parameter that covers most of each storage."""
    blocks = []
    for l in range(layer + 1):
        whole = {}  # storage → the parameter that covers most of it
        for p in model.layer(l).parameters():
            key = p.untyped_storage().data_ptr()
            if key not in whole or p.numel() > whole[key].numel():
                whole[key] = p
        blocks.append(list(whole.values()))
    return model.hf.get_submodule(model.arch.embed).weight, blocks


def _digests(embed, blocks, layers: list[int], hash_of) -> dict[int, str]:
    digest, out = hashlib.sha256(hash_of(embed).encode()), {}
    for l, block in enumerate(blocks):
        for h in sorted(f"{tuple(p.shape)}{hash_of(p)}" for p in block):
            digest.update(h.encode())
        if l in layers:
            out[l] = digest.copy().hexdigest()[:16]
    return out


def check_stats(model: Model, stats: Mapping[int, KeyStats], layers: Iterable[int]) -> None:
    """`KeyStats.check` for each of `layers`, hashing the weights once for all of them."""
    layers = list(layers)
    hashes = weights_hashes(model, layers)
    for l in layers:
        stats[l].check(model, hashes[l])


def provenance(model: Model, layer: int, corpus: Corpus | None, dtype: torch.dtype, max_len: int = 128,
               forward_dtype: torch.dtype | None = None, weights: str | None = None) -> dict:
    return {
        "model": model.name, "weights": weights or weights_hash(model, layer), "layer": layer, "dtype": str(dtype),
        "corpus": corpus.id if corpus else None, "revision": corpus.revision if corpus else None,
        "max_len": max_len, "forward": str(forward_dtype or model.dtype),
    }


def _path(model: Model, c: Corpus, layer: int, dtype: torch.dtype, forward: torch.dtype) -> Path:
    # a cache computed with one forward dtype is never read for the other: they differ in name
    name = f"layer{layer:02d}-{dtype_name(dtype)}" + ("" if forward == model.dtype else f"-{dtype_name(forward)}-forward")
    return cache_dir() / "stats" / slug(model.name) / slug(c.id) / name


class _Run:
    """The running sum of one layer: its cache file, provenance and progress."""

    def __init__(self, model, c, layer, dtype, max_len, use_cache, forward_dtype, weights=None):
        forward_dtype = forward_dtype or model.dtype
        self.layer, self.path, self.use_cache = layer, _path(model, c, layer, dtype, forward_dtype), use_cache
        self.prov = provenance(model, layer, c, dtype, max_len, forward_dtype, weights)
        self.sum = torch.zeros(model.d_mlp, model.d_mlp, dtype=dtype, device=model.device)
        self.count, self.docs, self.exhausted = 0, 0, False
        if use_cache and self.path.with_suffix(".json").exists():
            self._resume()

    def _resume(self) -> None:
        try:
            tensors, meta = load_tensors(self.path)
            if tensors["sum"].shape != self.sum.shape or not torch.isfinite(tensors["sum"]).all():
                raise UnreadableFile(f"{self.path}.safetensors holds a sum of shape {tuple(tensors['sum'].shape)} "
                                     f"(expected {tuple(self.sum.shape)}, finite)")
            meta["count"], meta["docs"], meta["exhausted"]
        except (UnreadableFile, KeyError) as e:
            warnings.warn(f"the cached statistics at {self.path} cannot be read ({e}); recomputing", stacklevel=4)
            return
        if meta.get("provenance") != self.prov:
            diff = {k: (meta.get("provenance", {}).get(k), v) for k, v in self.prov.items()
                    if meta.get("provenance", {}).get(k) != v}
            warnings.warn(f"cached statistics at {self.path} do not match this model/corpus ({diff}); recomputing",
                          stacklevel=4)
            return
        if rank() == 0:  # the true sum is Σ over ranks of `sum`: the saved part counts once
            self.sum = tensors["sum"].to(self.sum.device)
        self.count, self.docs, self.exhausted = meta["count"], meta["docs"], meta["exhausted"]

    def save(self) -> None:
        """Collective under torch.distributed: the ranks' partial sums are reduced to rank 0, which writes."""
        if self.use_cache:
            total = reduce_sum_(self.sum.clone(), to=0) if is_distributed() else self.sum
            if rank() == 0:
                save_tensors(self.path, {"sum": total}, {"provenance": self.prov, "count": self.count,
                                                         "docs": self.docs, "exhausted": self.exhausted})

    def result(self) -> KeyStats:
        """C = Σ k kᵀ / count (collective under torch.distributed: every rank gets the same C)."""
        if self.count == 0:
            raise ValueError(f"no tokens for the statistics of layer {self.layer}: the corpus is empty")
        total = reduce_sum_(self.sum.clone())
        return KeyStats(self.layer, (total / self.count).cpu(), self.count, dict(self.prov, tokens=self.count))


def key_stats(
    model: Model, layers: int | Sequence[int], *, corpus: str | Corpus = "wordnet", tokens: int = DEFAULT_TOKENS,
    dtype: torch.dtype = torch.float32, forward_dtype: torch.dtype | str | None = AUTO, batch_size: int = 16,
    max_len: int = 128, cache: bool = True, save_every: int = 20, progress: bool = True,
) -> KeyStats | dict[int, KeyStats]:
    """Second moments of the MLP keys at `layers` over at least `tokens` corpus tokens.

        >>> key_stats(model, 5).moment.shape             # torch.Size([1536, 1536])
        >>> key_stats(model, [4, 5], corpus="notes.txt", tokens=20_000)   # {4: KeyStats, 5: KeyStats}

    Returns a `KeyStats` for an int layer, a dict `{layer: KeyStats}` for a list. Layers whose
    cache already holds `tokens` tokens are read; the others are computed together, resuming
    from their saved partial sums. With `cache=False` nothing is read or written.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    single = isinstance(layers, int) and not isinstance(layers, bool)
    layer_list = [model._check_layer(l) for l in ([layers] if single else layers)]
    if not layer_list:
        raise ValueError("no layers given: pass a layer index or a list of them")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"statistics accumulate in torch.float32 or torch.float64, got {dtype}")
    if forward_dtype == AUTO:
        forward_dtype = auto_dtype(model)
    if forward_dtype not in (None, model.dtype, torch.bfloat16, torch.float16):
        raise ValueError(f"forward_dtype must be 'auto', None (the model's {model.dtype}), torch.bfloat16 or "
                         f"torch.float16 (autocast can only lower the precision), got {forward_dtype!r}")
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive int, got {tokens!r}")
    c = get_corpus(corpus)
    forward_dtype = None if forward_dtype == model.dtype else forward_dtype
    hashes = weights_hashes(model, layer_list)
    runs = {l: _Run(model, c, l, dtype, max_len, cache, forward_dtype, hashes[l]) for l in dict.fromkeys(layer_list)}
    todo = [r for r in runs.values() if r.count < tokens and not r.exhausted]
    # runs that stopped at different places resume separately (usually there is one group)
    for docs, group in itertools.groupby(sorted(todo, key=lambda r: r.docs), key=lambda r: r.docs):
        _accumulate(model, c, list(group), docs, tokens, batch_size, max_len, save_every, progress, forward_dtype)
    out = {l: r.result() for l, r in runs.items()}
    return out[layer_list[0]] if single else out


@torch.no_grad()
def _accumulate(model: Model, c: Corpus, runs: list[_Run], skip: int, tokens: int, batch_size: int,
                max_len: int, save_every: int, progress: bool, forward_dtype: torch.dtype | None) -> None:
    from ..journal import journal

    texts = itertools.islice(c.texts(), skip, None)
    sites = [model.mlp_key(r.layer) for r in runs]
    bar = tqdm(total=tokens, initial=min(runs[0].count, tokens), desc=f"key stats {[r.layer for r in runs]}",
               unit="tok", disable=not progress or rank() != 0)
    with journal(model).suspended():
        for step in itertools.count():
            consumed = list(itertools.islice(texts, batch_size))
            if not consumed:
                for r in runs:
                    r.exhausted = True
                break
            batch = [t for t in consumed if t.strip()]
            added = 0
            if batch:
                enc = padded(model, batch, max_length=max_len)
                mask = enc["attention_mask"].reshape(-1).bool()  # padding excluded
                added = int(mask.sum())
                # Under torch.distributed every rank reads every batch (to count its tokens, so all
                # stop where one process would) and runs the model on every world_size-th one.
                if step % world_size() == rank():
                    # autocast around the forward only: the sums below stay in C's dtype
                    with _autocast(model, forward_dtype), model.record(sites, stop=True) as cache:
                        model.hf(**enc)
                    for r in runs:
                        keys = cache[f"blocks.{r.layer}.mlp_key"].reshape(mask.shape[0], -1)  # [batch*pos, d_mlp]
                        accumulate_second_moment(r.sum, keys, mask)  # sums in r.sum's dtype
            for r in runs:
                r.count += added
                r.docs += len(consumed)
            bar.update(added)
            if (step + 1) % save_every == 0:
                for r in runs:
                    r.save()
            if runs[0].count >= tokens:
                break
    bar.close()
    for r in runs:
        r.save()


def _autocast(model: Model, dtype: torch.dtype | None):
    return torch.autocast(model.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
