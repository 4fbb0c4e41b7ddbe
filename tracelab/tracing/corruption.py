"""How the subject is hidden from the model: Gaussian noise on its embeddings, or another prompt.

    >>> GaussianNoise()                      # std = 3 × std of subject embeddings (the paper)
    >>> GaussianNoise(std=0.1)               # an absolute std
    >>> GaussianNoise(noise=torch.randn(10, 4, 576))   # explicit noise [samples, n_subject, d_model]
    >>> TokenReplace("The Colosseum is located in the city of")   # clean/corrupt prompt pair

A corruption turns the clean prompt into a `Corrupted` run: the token ids of each sample and an
optional patch of the `embed` site (noise is added to the subject's token embeddings).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..io import atomic_write
from ..models.hooks import add

_STD_CACHE: dict[str, float] = {}


@dataclass
class Corrupted:
    """The corrupted run of one prompt: `ids` `[samples, pos]`, an `embed` site patch (or None),
    and `first` — the first position whose input differs from the clean prompt (positions before
    it cannot carry the corruption: restoring them has exactly zero effect)."""

    ids: torch.Tensor
    embed_fn: Callable | None
    first: int
    settings: dict = field(default_factory=dict)
    noise: torch.Tensor | None = None  # [samples, n_subject, d_model], what embed_fn adds from `first`

    @property
    def samples(self) -> int:
        return self.ids.shape[0]


def embedding_std(model) -> float:
    """Std of the subject tokens' embeddings over the built-in facts' subjects (ROME's
    `collect_embedding_std`), computed once per model and cached in memory and on disk.

        >>> embedding_std(model)             # float; GaussianNoise's std is 3× this
    """
    from ..models.loading import cache_dir

    key = f"{model.name}|{model.d_model}|{model.dtype}"
    if key in _STD_CACHE:
        return _STD_CACHE[key]
    path = cache_dir() / "embedding_std.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if key not in stored:
        from ..data import builtin_facts

        subjects = sorted({f["subject"] for f in builtin_facts()})
        embed = model.hf.get_submodule(model.arch.embed)
        with torch.no_grad():
            rows = [embed(torch.tensor(model.tokenizer(s, add_special_tokens=False)["input_ids"],
                                       device=model.device)) for s in subjects]
        stored[key] = float(torch.cat(rows).float().std())
        stored = {**(json.loads(path.read_text()) if path.is_file() else {}), key: stored[key]}
        atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(stored, indent=1)))
    _STD_CACHE[key] = stored[key]
    return stored[key]


@dataclass(frozen=True)
class GaussianNoise:
    """Add N(0, std²) noise to the subject tokens' embeddings, a fresh draw per sample.

        >>> tracelab.trace(model, prompt, subject, corruption=GaussianNoise(scale=3.0))
        >>> GaussianNoise(std=0.1); GaussianNoise(noise=torch.randn(10, 4, model.d_model))

    std = `scale` × `embedding_std(model)` unless `std` is given; `noise` `[samples,
    n_subject_tokens, d_model]` fixes the draws (to compare implementations exactly).
    """

    scale: float = 3.0
    std: float | None = None
    noise: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("scale", "std"):
            value = getattr(self, name)
            if value is None and name == "std":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"GaussianNoise({name}=...) must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"GaussianNoise({name}={value!r}): the noise {name} must be a finite number > 0 "
                                 "(the paper uses scale=3.0, three times the subject embeddings' std)")
        if self.noise is not None and not torch.isfinite(torch.as_tensor(self.noise, dtype=torch.float32)).all():
            raise ValueError("GaussianNoise(noise=...) holds NaN or inf values")

    def resolve_std(self, model) -> float:
        """The noise std used for `model`."""
        return float(self.std) if self.std is not None else self.scale * embedding_std(model)

    def corrupt(self, model, ids: torch.Tensor, span: tuple[int, int], samples: int, seed: int) -> Corrupted:
        """Corrupted run for `ids` `[1, pos]` with subject tokens `span` = `[start, end)`."""
        a, b = span
        shape = (samples, b - a, model.d_model)
        if self.noise is not None:
            noise = torch.as_tensor(self.noise)
            if tuple(noise.shape) != shape:
                raise ValueError(
                    f"GaussianNoise(noise=...) has shape {tuple(noise.shape)}, expected [samples, "
                    f"n_subject_tokens, d_model] = {list(shape)} for this prompt; draw it with that shape")
            settings = {"corruption": "gaussian", "std": None, "explicit_noise": True}
        else:
            std = self.resolve_std(model)
            gen = torch.Generator().manual_seed(seed)
            noise = torch.randn(shape, generator=gen) * std
            settings = {"corruption": "gaussian", "std": std, "scale": self.scale, "explicit_noise": False}
        noise = noise.to(model.device, torch.float32)
        # x_embed[s, a:b] += noise[s]  (rows are the samples of one prompt)
        return Corrupted(ids.expand(samples, -1), add(noise, positions=list(range(a, b))), a, settings, noise)


@dataclass(frozen=True)
class TokenReplace:
    """Corrupt by running another prompt of the same token count (e.g. another subject).

        >>> tracelab.trace(model, "The Eiffel Tower is in", "The Eiffel Tower",
        ...                corruption=TokenReplace("The Space Needle is in"))

    Deterministic: one corrupted run whatever `samples` is.
    """

    prompt: str

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise TypeError(f"TokenReplace needs the corrupt prompt as a non-empty string, got {self.prompt!r}")

    def corrupt(self, model, ids: torch.Tensor, span: tuple[int, int], samples: int, seed: int) -> Corrupted:
        """Corrupted run: the other prompt's ids `[1, pos]`; `first` = first differing token."""
        other = model.tokenize(self.prompt)["input_ids"]
        if other.shape != ids.shape:
            raise ValueError(
                f"TokenReplace prompt {self.prompt!r} has {other.shape[1]} tokens "
                f"{model.tokens(self.prompt)} but the clean prompt has {ids.shape[1]} "
                f"{[model.tokenizer.decode([i]) for i in ids[0].tolist()]}; use a corrupt prompt "
                "with the same number of tokens")
        differ = (other[0] != ids[0]).nonzero()
        if len(differ) == 0:
            raise ValueError(f"TokenReplace prompt {self.prompt!r} is the clean prompt: nothing is corrupted")
        return Corrupted(other, None, int(differ[0]), {"corruption": "token_replace", "corrupt_prompt": self.prompt})
