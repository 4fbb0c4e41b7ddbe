"""The registered editing methods, one module each (importing this package registers them).

    >>> from tracelab.editing import registry
    >>> registry.names()            # ['alphaedit', 'ft-l', 'ft-m', 'grace', 'ike', 'ke', 'kn', 'lora', 'memit', 'mend', 'rome', 'serac', 't-patcher', 'wise']

`DEFAULT` is what `tl.edit` uses when no method is named.
"""

from . import alphaedit, ft, grace, ike, ke, kn, lora, memit, mend, rome, serac, tpatcher, wise  # noqa: F401  (each registers itself)
from .alphaedit import AlphaEditParams
from .ft import FTLParams, FTMParams, FTParams
from .grace import GraceParams
from .ike import IKEParams
from .ke import KEParams
from .kn import KNParams
from .lora import LoRAParams
from .memit import MemitParams
from .mend import MendParams
from .rome import RomeParams
from .serac import SeracParams
from .tpatcher import TPatcherParams
from .wise import WiseParams

DEFAULT = "rome"

__all__ = ["AlphaEditParams", "DEFAULT", "FTLParams", "FTMParams", "FTParams", "GraceParams", "IKEParams", "KEParams",
           "KNParams", "LoRAParams", "MemitParams", "MendParams", "RomeParams", "SeracParams", "TPatcherParams",
           "WiseParams"]
