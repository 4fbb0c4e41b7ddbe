"""tracelab: see where a language model stores a fact, then change it there.

    >>> import tracelab as tl
    >>> model = tl.load_model()                    # embedded SmolLM2-135M, offline
    >>> model.predict("The Eiffel Tower is located in the city of", k=1)
"""

from .models import Model, Site, load_model

__version__ = "0.1.0"
__all__ = ["Model", "Site", "load_model"]
