"""The registered editing methods, one module each (importing this package registers them).

    >>> from tracelab.editing import registry
    >>> registry.names()                           # ['alphaedit', 'memit', 'rome']

`DEFAULT` is what `tl.edit` uses when no method is named.
"""

from . import alphaedit, memit, rome  # noqa: F401  (each registers itself)
from .alphaedit import AlphaEditParams
from .memit import MemitParams
from .rome import RomeParams

DEFAULT = "rome"

__all__ = ["AlphaEditParams", "DEFAULT", "MemitParams", "RomeParams"]
