"""`trace(...)`: causal tracing of one fact (Meng et al. 2022, Figure 1).

    >>> r = tracelab.trace(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
    >>> r.figure().show(); r.peak("mlp")
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch

from .. import dtypes
from ..heap import reuse_heap
from ..models.loading import as_model
from .attribution import estimate_scores, top_cells
from .budget import batch_tokens, check_budget
from .corruption import GaussianNoise, TokenReplace
from .fast import run_fast
from .metrics import METRICS
from .naive import run_naive
from .names import KINDS
from .problem import Problem, warn_unknown
from .result import TraceResult
from .walk import unwalkable_layer

ENGINES = ("fast", "naive", "nnsight")


def _int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_kinds(kinds) -> tuple[str, ...]:
    """Kinds as a tuple, validated (a single string is one kind)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown kind(s) {bad or kinds!r}: choose from {KINDS}, e.g. kinds=('resid', 'mlp')")
    return tuple(dict.fromkeys(kinds))


def resolve_dtype(model, dtype) -> torch.dtype | None:
    """The autocast dtype for `dtype` (None, a torch dtype, a name or "auto": `dtypes.auto_dtype`),
    or None for the model's own."""
    if dtype == dtypes.AUTO:
        return dtypes.auto_dtype(model)
    dtype = dtypes.parse_dtype(dtype)
    if dtype is None or dtype == model.dtype:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {dtype} on a {model.dtype} model: autocast can only lower precision "
                         "(bfloat16/float16); load the model in float32 instead")
    return dtype


def resolve_target(model, prompt: str, target, clean_top: int | None = None) -> int:
    """Token id of `target`: None → the model's top-1 next token, str → its first token, int → itself."""
    if target is None:
        return int(model.next_token_logits(prompt)[0].argmax()) if clean_top is None else clean_top
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise TypeError(f"target must be None, an answer string or a token id, got {type(target).__name__}")
    if isinstance(target, int):
        vocab = model.hf.get_output_embeddings().weight.shape[0]
        if not 0 <= target < vocab:
            raise ValueError(f"target token id {target} out of range 0..{vocab - 1}")
        return target
    return model.target_ids(prompt, target)[0]  # raises on an empty target


def check_remote(corruption, screen, remote: bool) -> None:
    """What a remote nnsight trace cannot do: read the embedding weights (for the default noise
    scale) or run the attribution screen here."""
    if not remote:
        return
    if corruption is None or (isinstance(corruption, GaussianNoise) and corruption.std is None
                              and corruption.noise is None):
        raise ValueError("remote=True: the default noise scale is measured on the embedding weights, which "
                         "are not here; give GaussianNoise(std=...) or GaussianNoise(noise=...), or TokenReplace")
    if screen is not None:
        raise ValueError("remote=True cannot run the attribution screen (it needs gradients here); drop screen=")


def prepare(model, prompt: str, subject: str, target: str | int | None = None, *,
            kinds: Sequence[str] | str = KINDS, corruption: GaussianNoise | TokenReplace | None = None,
            window: int = 10, metric: str = "prob", foil: int | None = None, samples: int = 10,
            seed: int = 0, dtype_name: str | None = None, last_logits=None) -> Problem:
    """Check the arguments (nothing runs on bad input), run clean and corrupted once → `Problem`.

        >>> problem = prepare(model, prompt, subject, samples=3)
        >>> run_fast(problem, cells), run_naive(problem, cells)   # cells: {kind: bool [n_layers, n_tokens]}
    """
    for name, text in (("prompt", prompt), ("subject", subject)):
        if not isinstance(text, str):
            raise TypeError(f"the {name} must be a string, got {type(text).__name__} {text!r}")
    if not prompt.strip():
        raise ValueError(f"empty prompt {prompt!r}: give the text the model should continue")
    kinds = check_kinds(kinds)
    _int("window", window, 1), _int("samples", samples, 1), _int("seed", seed, 0)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    corruption = GaussianNoise() if corruption is None else corruption
    if not isinstance(corruption, (GaussianNoise, TokenReplace)):
        raise TypeError(f"corruption must be GaussianNoise(...) or TokenReplace(...), got {corruption!r}")
    if isinstance(target, str) and not target.strip():
        raise ValueError(f"empty target {target!r}: give the answer text, e.g. 'Paris', or None for the top-1")
    ids = model.tokenize(prompt)["input_ids"]
    span = model.subject_span(prompt, subject)  # ValueError with the tokens if absent
    target_id = None if target is None else resolve_target(model, prompt, target)  # None: the clean top-1
    if isinstance(corruption, TokenReplace):
        samples = 1
    corrupted = corruption.corrupt(model, ids, span, samples, seed)
    problem = Problem.build(model, ids, span, target_id, corrupted, metric, foil, window, kinds,
                            dtype_name or dtypes.dtype_name(model.dtype), last_logits)
    warn_unknown(model, prompt, problem.metric.target, problem.clean_top)
    return problem


def trace(model, prompt: str, subject: str, target: str | int | None = None, *,
          kinds: Sequence[str] | str = KINDS, corruption: GaussianNoise | TokenReplace | None = None,
          window: int = 10, metric: str = "prob", foil: int | None = None, samples: int = 10,
          seed: int = 0, dtype: torch.dtype | str | None = None, progress: bool = True,
          engine: str = "fast", screen: int | None = None, max_batch_tokens: int | None = None,
          max_batch_bytes: int | None = None, remote: bool = False) -> TraceResult:
    """Causal trace: restore clean states into corrupted runs, cell by cell (kind × layer × token).

        >>> r = trace(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
        >>> r.effect("mlp").shape            # [n_layers, n_tokens]
        >>> trace(model, prompt, subject, dtype="auto", screen=50)   # fast: bf16 where native, top-50 cells exact

    - `target`: None → the model's top-1 next token; a string → its first token; an int → token id.
    - `kinds`: `resid` restores the block output at (layer, token); `mlp`/`attn` restore that
      sublayer's output at the token for the `window` layers centred on the layer.
    - `corruption`: `GaussianNoise()` (default; 3 × subject-embedding std) or `TokenReplace(prompt)`.
    - `metric`: `prob`, `log_prob` or `logit_diff` (vs `foil`, default the corrupted top-1).
    - `dtype`: e.g. "bfloat16" runs everything under autocast (the paper's setting; ~6× faster matmuls
      on an AMX CPU, ~110× slower on an AVX2 one); "auto": bfloat16 only where it is native (`dtypes.fast_bf16`).
    - `engine`: "fast" (the walk, see `tracing.fast`), "naive" (one forward per cell, the reference)
      or "nnsight" (batched nnsight traces; `remote=True` runs them on NDIF, see `tracing.nnsight_engine`).
    - `max_batch_tokens` (default 16384) or `max_batch_bytes`: the batch size of restored runs,
      in row-positions or as an activation-memory budget (see `tracing.budget`).
    - `screen=k`: estimate all cells by attribution patching, run only the top-k per kind exactly.
    Returns a `TraceResult` (scores `[samples, n_layers, n_tokens]` per kind).
    """
    user_object, model = model, as_model(model)  # a Model, transformers model, TransformerBridge or nnsight model
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    check_budget(max_batch_tokens, max_batch_bytes)
    runner = None
    if engine == "nnsight":
        from .nnsight_engine import NNsightRunner

        check_remote(corruption, screen, remote)
        runner = NNsightRunner(model, user_object, remote=remote)
    elif remote:
        raise ValueError(f"remote=True runs through nnsight: use engine='nnsight' (got engine={engine!r})")
    wrapper = unwalkable_layer(model) if engine == "fast" else None
    if wrapper:
        warnings.warn(f"the decoder layers are {wrapper}, whose forward takes only *args/**kwargs, so the layer "
                      "walk cannot replay their calls: using the naive engine, one full forward per cell (same "
                      "results, ~4-5x the FLOPs of the fast engine)", stacklevel=2)
        engine = "naive"
    if screen is not None:
        _int("screen", screen, 0)
    autocast = resolve_dtype(model, dtype)
    dtype_name = dtypes.dtype_name(autocast or model.dtype)
    amp = torch.autocast(model.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    # native (the transformers modules beneath a bridge) entered once, not per restored run; the
    # nnsight engine runs the user's nnsight object as it is
    native = model.native() if engine != "nnsight" else contextlib.nullcontext()
    with amp, reuse_heap(), native:
        problem = prepare(model, prompt, subject, target, kinds=kinds, corruption=corruption, window=window,
                          metric=metric, foil=foil, samples=samples, seed=seed, dtype_name=dtype_name,
                          last_logits=runner.last_logits if runner else None)
        kinds, corrupted = problem.kinds, problem.corrupted
        n, L = problem.n_tokens, problem.n_layers
        per_batch = batch_tokens(model, n, autocast or model.dtype, max_batch_tokens, max_batch_bytes)
        computable = torch.zeros(L, n, dtype=torch.bool)
        computable[:, corrupted.first:] = True  # before `first`, restoring changes nothing: effect 0
        cells = {k: (torch.ones(L, n, dtype=torch.bool) if engine == "naive" else computable) for k in kinds}
        estimates = None
        if screen is not None:
            estimates = estimate_scores(problem)
            cells = {k: top_cells(estimates[k], problem.corrupted_scores, computable, screen) for k in kinds}
        if not any(mask.any() for mask in cells.values()):
            scores = problem.empty_scores()
        elif engine == "naive":
            scores = run_naive(problem, cells, progress=progress)
        elif engine == "nnsight":
            from .nnsight_engine import run_nnsight

            scores = run_nnsight(problem, cells, runner, per_batch, progress=progress)
        else:
            scores = run_fast(problem, cells, progress=progress, max_batch_tokens=per_batch)
    exact = {k: cells[k] | ~computable for k in kinds}
    if estimates is not None:
        for k in kinds:
            scores[k][:, ~exact[k]] = estimates[k][:, ~exact[k]]
    settings = {"model": model.name, "kinds": list(kinds), "window": window, "samples": corrupted.samples, "seed": seed,
                "dtype": dtype_name, "engine": engine, "screen": screen, "foil": problem.metric.foil,
                "first_corrupted": corrupted.first, **corrupted.settings}
    target_id = problem.metric.target
    return TraceResult(prompt, subject, model.tokenizer.decode([target_id]), target_id,
                       [model.tokenizer.decode([i]) for i in problem.ids[0].tolist()], problem.span, metric,
                       scores, problem.clean_score, problem.corrupted_scores, exact, settings)


def attribute(model, prompt: str, subject: str, target: str | int | None = None, *,
              kinds: Sequence[str] | str = KINDS, **kwargs) -> TraceResult:
    """Attribution-patching estimate of the trace grid (no cell run exactly).

        >>> est = attribute(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
        >>> est.effect("mlp")                # [n_layers, n_tokens] estimated indirect effect

    Takes `trace`'s keyword arguments (corruption, window, metric, samples, seed, dtype);
    returns a `TraceResult` whose `exact` masks are False except before the subject.
    """
    return trace(as_model(model), prompt, subject, target, kinds=kinds, screen=0, **kwargs)

