"""Trace many facts and average by token class: the paper's Figure 2.

    >>> avg = tracelab.trace_dataset(model, "/work/shared/data/known_1000.json", out="traces/", limit=50)
    >>> avg.mean("mlp").shape                # [6 token classes, n_layers] average indirect effect
    >>> avg.figure().show(); avg.save("traces/average")

Facts are known_1000-shaped records (`prompt`, `subject`, `attribute`). Only facts the model
answers right (top-1 next token = the attribute's first token) are traced. With `out`, each
fact's `TraceResult` is written as soon as it is done (`out/fact_<index>`), and a rerun loads
what is there: an interrupted run (crash, Ctrl-C) resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..io import atomic_write, load_tensors, save_tensors
from ..models.loading import as_model
from .api import check_kinds, trace
from .names import KINDS, TOKEN_CLASSES
from .result import TraceResult


@dataclass
class DatasetTrace:
    """Per-fact indirect-effect curves by token class: `curves[kind]` `[n_facts, 6, n_layers]`
    (NaN where a prompt has no token of a class, e.g. no middle subject token).

        >>> avg.mean("mlp"), avg.ci("mlp")   # [6, n_layers]; (low, high) 95 % bands
    """

    curves: dict[str, torch.Tensor]
    facts: list[dict]
    skipped: int
    settings: dict = field(default_factory=dict)
    classes: tuple[str, ...] = TOKEN_CLASSES

    @property
    def n_facts(self) -> int:
        return len(self.facts)

    def mean(self, kind: str) -> torch.Tensor:
        """Average indirect effect `[6 classes, n_layers]` over the facts that have each class."""
        return self.curves[kind].nanmean(0)

    def ci(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """95 % confidence band of `mean(kind)`: `(low, high)`, each `[6, n_layers]`."""
        x = self.curves[kind]
        count = (~x.isnan()).sum(0).clamp(min=1)
        centred = (x - x.nanmean(0)).nan_to_num(0.0)
        std = (centred.pow(2).sum(0) / (count - 1).clamp(min=1)).sqrt()
        half = 1.96 * std / count.sqrt()
        return self.mean(kind) - half, self.mean(kind) + half

    def figure(self, **kwargs):
        """Line plots of the averages with confidence bands (see `tracelab.viz.dataset_figure`)."""
        from ..viz.trace_figures import dataset_figure

        return dataset_figure(self, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """`.pdf/.svg/.png/.html`: the figure; otherwise `<path>.safetensors` + `.json`."""
        path = Path(path)
        if path.suffix.lower() in (".pdf", ".svg", ".png", ".html"):
            from ..viz.export import save_figure

            return save_figure(self.figure(), path)
        meta = {"type": "DatasetTrace", "facts": self.facts, "skipped": self.skipped,
                "settings": self.settings, "classes": list(self.classes)}
        return save_tensors(path, {f"curves.{k}": v for k, v in self.curves.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetTrace":
        """Read what `save` wrote."""
        tensors, meta = load_tensors(path)
        if meta.get("type") != "DatasetTrace":
            raise ValueError(f"{path} does not hold a DatasetTrace (type {meta.get('type')!r})")
        curves = {k.split(".", 1)[1]: v for k, v in tensors.items()}
        return cls(curves, meta["facts"], meta["skipped"], meta["settings"], tuple(meta["classes"]))


def class_curves(result: TraceResult, kind: str) -> torch.Tensor:
    """`[6, n_layers]` mean indirect effect over each token class's positions (NaN if empty)."""
    effect = result.effect(kind)
    rows = [effect[:, pos].mean(1) if pos else torch.full((effect.shape[0],), float("nan"))
            for pos in result.token_classes().values()]
    return torch.stack(rows)


def _load_facts(facts) -> list[dict]:
    if isinstance(facts, (str, os.PathLike)):
        facts = json.loads(Path(facts).read_text())
    facts = list(facts)
    for i, fact in enumerate(facts):
        missing = [k for k in ("subject", "attribute") if k not in fact]
        if missing or ("prompt" not in fact and "template" not in fact):
            raise ValueError(f"fact {i} {fact!r} lacks {missing or ['prompt']}: records need subject, "
                             "attribute and prompt (or template with '{}')")
    return facts


def _prompt(fact: dict) -> str:
    return fact.get("prompt") or fact["template"].format(fact["subject"])


def trace_dataset(model, facts: Sequence[dict] | str | os.PathLike, out: str | os.PathLike | None = None, *,
                  limit: int | None = None, kinds: Sequence[str] | str = KINDS, progress: bool = True,
                  **trace_kwargs) -> DatasetTrace:
    """Trace every fact the model knows, averaging indirect effects by token class.

        >>> avg = trace_dataset(model, tracelab.data.builtin_facts(), out="traces", limit=20,
        ...                     samples=10, dtype="auto")

    `facts`: records (or a JSON file of them) with `prompt`, `subject`, `attribute`; `limit`: trace
    at most this many known facts; other keywords go to `trace`. Returns a `DatasetTrace`.
    """
    model = as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    facts = _load_facts(facts)
    kinds = check_kinds(kinds)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    settings = {"model": model.name, "kinds": list(kinds),
                **{k: str(v) for k, v in sorted(trace_kwargs.items()) if k != "progress"}}
    out = Path(out) if out is not None else None
    if out is not None:
        stored = out / "settings.json"
        if stored.is_file() and json.loads(stored.read_text()) != settings:
            raise ValueError(f"{out} holds traces made with other settings {json.loads(stored.read_text())}; "
                             f"now {settings}. Use another directory or the same settings to resume")
        atomic_write(stored, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1)))
    curves: dict[str, list] = {k: [] for k in kinds}
    kept, skipped = [], 0
    bar = tqdm(total=limit or len(facts), desc="trace dataset", disable=not progress)
    for index, fact in enumerate(facts):
        if limit is not None and len(kept) >= limit:
            break
        prompt = _prompt(fact)
        path = out / f"fact_{index:05d}" if out is not None else None
        if path is not None and path.with_suffix(".json").is_file():
            result = TraceResult.load(path)
        else:
            target = model.target_ids(prompt, fact["attribute"])[0]
            if int(model.next_token_logits(prompt)[0].argmax()) != target:
                skipped += 1
                continue
            result = trace(model, prompt, fact["subject"], target, kinds=kinds, progress=False, **trace_kwargs)
            if path is not None:
                result.save(path)
        for k in kinds:
            curves[k].append(class_curves(result, k))
        kept.append({"index": index, "prompt": prompt, "subject": fact["subject"], "attribute": fact["attribute"]})
        bar.update(1)
    bar.close()
    if not kept:
        raise ValueError(f"the model answers none of the {len(facts)} facts correctly: nothing to average")
    return DatasetTrace({k: torch.stack(v) for k, v in curves.items()}, kept, skipped, settings)
