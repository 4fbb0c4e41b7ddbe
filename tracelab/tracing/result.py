"""`TraceResult`: scores of every restored run, by kind × layer × token, with what produced them.

    >>> r = tracelab.trace(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
    >>> r.effect("mlp").shape                # [n_layers, n_tokens] mean indirect effect
    >>> r.peak("mlp")                        # layer of the largest MLP effect at the last subject token
    >>> r.save("out/eiffel")                 # out/eiffel.safetensors + .json;  .pdf/.png/.svg/.html: the figure
    >>> TraceResult.load("out/eiffel")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import load_tensors, save_tensors
from .names import FIGURE_SUFFIXES



def token_classes(n_tokens: int, span: tuple[int, int]) -> dict[str, list[int]]:
    """ROME's six token classes → positions (a class may be empty; single-token subjects are
    both first and last subject token).

        >>> token_classes(8, (1, 4))
        {'first_subject': [1], 'middle_subject': [2], 'last_subject': [3], 'first_subsequent': [4], 'further': [5, 6], 'last': [7]}
    """
    a, b = span
    return {
        "first_subject": [a],
        "middle_subject": list(range(a + 1, b - 1)),
        "last_subject": [b - 1],
        "first_subsequent": [b] if b < n_tokens else [],
        "further": list(range(b + 1, n_tokens - 1)),
        "last": [n_tokens - 1],
    }


@dataclass
class TraceResult:
    """Causal trace of one prompt. Build it with `tracelab.trace(...)`.

        >>> r.scores["mlp"].shape            # [samples, n_layers, n_tokens]: metric of each restored run
        >>> r.mean("mlp"), r.effect("mlp")   # [n_layers, n_tokens]: mean score, mean indirect effect
        >>> r.p_clean, r.p_corrupted         # metric of the clean run, mean over corrupted samples

    `corrupted` `[samples]` is the metric of each corrupted run; `exact[kind]` `[n_layers,
    n_tokens]` is False where a cell was estimated by the attribution screen, not run.
    """

    prompt: str
    subject: str
    target: str
    target_id: int
    tokens: list[str]
    span: tuple[int, int]
    metric: str
    scores: dict[str, torch.Tensor]
    clean: float
    corrupted: torch.Tensor
    exact: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    # ---- numbers --------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.scores)

    @property
    def n_layers(self) -> int:
        return next(iter(self.scores.values())).shape[1]

    @property
    def p_clean(self) -> float:
        """Metric of the clean run (p(target) for `metric="prob"`)."""
        return self.clean

    @property
    def p_corrupted(self) -> float:
        """Metric of the corrupted run, mean over samples."""
        return float(self.corrupted.mean())

    def _kind(self, kind: str) -> str:
        if kind not in self.scores:
            raise ValueError(f"kind {kind!r} not traced; this result has {list(self.scores)}")
        return kind

    def mean(self, kind: str) -> torch.Tensor:
        """Mean restored score over samples `[n_layers, n_tokens]`."""
        return self.scores[self._kind(kind)].mean(0)

    def effect(self, kind: str) -> torch.Tensor:
        """Mean indirect effect `[n_layers, n_tokens]`: restored − corrupted, per sample, averaged."""
        return (self.scores[self._kind(kind)] - self.corrupted[:, None, None]).mean(0)

    def ci(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """95 % confidence interval of the mean indirect effect: `(low, high)`, each `[n_layers, n_tokens]`."""
        ie = self.scores[self._kind(kind)] - self.corrupted[:, None, None]
        half = 1.96 * ie.std(0, unbiased=True) / ie.shape[0] ** 0.5 if ie.shape[0] > 1 else torch.zeros_like(ie[0])
        return ie.mean(0) - half, ie.mean(0) + half

    def token_classes(self) -> dict[str, list[int]]:
        """The six ROME token classes → positions; see `tracelab.tracing.result.token_classes`."""
        return token_classes(len(self.tokens), self.span)

    def _position(self, token: int | str) -> list[int]:
        if isinstance(token, int):
            if not -len(self.tokens) <= token < len(self.tokens):
                raise ValueError(f"token {token} out of range for {len(self.tokens)} tokens {self.tokens}")
            return [token % len(self.tokens)]
        classes = self.token_classes()
        if token not in classes:
            raise ValueError(f"unknown token {token!r}: give a position or one of {list(classes)}")
        if not classes[token]:
            raise ValueError(f"token class {token!r} is empty for this prompt (tokens {self.tokens}, subject span {self.span})")
        return classes[token]

    def peak(self, kind: str = "mlp", token: int | str = "last_subject") -> int:
        """Layer with the largest mean indirect effect of `kind` at `token` (a position or a class)."""
        return int(self.effect(kind)[:, self._position(token)].mean(1).argmax())

    def window(self, kind: str = "mlp", size: int = 5, token: int | str = "last_subject") -> list[int]:
        """The `size` consecutive layers with the largest summed effect at `token` (MEMIT's layers)."""
        if not 1 <= size <= self.n_layers:
            raise ValueError(f"window size {size} must be in 1..{self.n_layers}")
        curve = self.effect(kind)[:, self._position(token)].mean(1)
        sums = curve.unfold(0, size, 1).sum(1)
        start = int(sums.argmax())
        return list(range(start, start + size))

    # ---- figures and files ----------------------------------------------------------------
    def figure(self, **kwargs):
        """Three-panel plotly heatmap (see `tracelab.viz.trace_figure`)."""
        from ..viz.trace_figures import trace_figure

        return trace_figure(self, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """`.pdf/.svg/.png/.html`: export the figure; otherwise write `<path>.safetensors` + `.json`."""
        path = Path(path)
        if path.suffix.lower() in FIGURE_SUFFIXES:
            from ..viz.export import save_figure

            return save_figure(self.figure(), path)
        tensors = {"corrupted": self.corrupted.float()}
        for kind in self.scores:
            tensors[f"scores.{kind}"] = self.scores[kind].float()
            tensors[f"exact.{kind}"] = self.exact.get(kind, torch.ones(self.scores[kind].shape[1:], dtype=torch.bool))
        meta = {"type": "TraceResult", "prompt": self.prompt, "subject": self.subject, "target": self.target,
                "target_id": self.target_id, "tokens": self.tokens, "span": list(self.span),
                "metric": self.metric, "clean": self.clean, "kinds": list(self.scores), "settings": self.settings}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TraceResult":
        """Read a result written by `save` (safetensors + JSON)."""
        tensors, meta = load_tensors(path)
        if meta.get("type") != "TraceResult":
            raise ValueError(f"{path} does not hold a TraceResult (type {meta.get('type')!r})")
        kinds = meta["kinds"]
        return cls(meta["prompt"], meta["subject"], meta["target"], meta["target_id"], meta["tokens"],
                   tuple(meta["span"]), meta["metric"], {k: tensors[f"scores.{k}"] for k in kinds},
                   meta["clean"], tensors["corrupted"], {k: tensors[f"exact.{k}"] for k in kinds},
                   meta["settings"])
