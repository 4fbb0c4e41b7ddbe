"""tracelab: see where a language model stores a fact, then change it there.

    >>> import tracelab as tl
    >>> model = tl.load_model()                    # embedded SmolLM2-135M, offline
    >>> r = tl.trace(model, "The Eiffel Tower is located in the city of", subject="The Eiffel Tower")
    >>> edit = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of",
    ...                target="Rome", method="rome", layer=r.peak("mlp"))
    >>> edit.undo()
"""

from __future__ import annotations

import importlib

from .models import Model, Site, load_model

__version__ = "0.1.0"

# Public names of the science packages, imported on first use so `import tracelab` stays fast.
_LAZY = {
    "trace": "tracing", "trace_dataset": "tracing", "attribute": "tracing", "TraceResult": "tracing",
    "GaussianNoise": "tracing", "TokenReplace": "tracing", "knowledge_neurons": "tracing",
    "edit": "editing", "Edit": "editing", "Journal": "editing", "journal": "editing", "Guard": "editing",
    "evaluate": "evaluation", "compare": "evaluation", "train_editor": "training",
    "SteeringVector": "steering", "actadd": "steering", "caa": "steering", "repe": "steering",
    "steer": "steering",
}
_SUBPACKAGES = {"tracing", "editing", "evaluation", "training", "steering", "viz", "widgets", "kernels", "data", "models"}

__all__ = ["Model", "Site", "load_model", *_LAZY]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'tracelab' has no attribute {name!r}")
