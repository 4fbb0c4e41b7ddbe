"""Where things are in any decoder LM: `Model`, its sites, hooks, prompt helpers, loading."""

from .architectures import ARCHITECTURES, Architecture, architecture_for, supported_model_types
from .hooks import Site, add, intervene, patch, record, replace
from .loading import as_model, cache_dir, load_model
from .model import Model, OutWeight

__all__ = [
    "ARCHITECTURES", "Architecture", "as_model", "Model", "OutWeight", "Site", "add", "architecture_for",
    "cache_dir", "intervene", "load_model", "patch", "record", "replace", "supported_model_types",
]
