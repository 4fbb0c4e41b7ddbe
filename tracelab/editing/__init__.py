"""Locate-then-edit: ROME, MEMIT and AlphaEdit weight edits, key statistics, and the journal.

    >>> import tracelab as tl
    >>> e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of",
    ...             target="Rome", method="rome", layer=5)
    >>> tl.journal(model).edits, e.info["norms"]
    >>> e.undo()                                   # weights back, bit for bit

Modules: `requests` (Request), `stats` + `corpus` (key second moments), `keys` (k*), `values`
(v*/z optimisation), `rome`, `memit`, `alphaedit`, `delta` (WeightDelta), `journal`, `api` (edit).
"""

from .alphaedit import AlphaEditParams
from .api import METHODS, edit
from .corpus import Corpus, corpus
from .delta import WeightDelta
from .journal import Edit, Journal, journal
from .memit import MemitParams
from .requests import Request
from .rome import RomeParams
from .stats import KeyStats, key_stats
from .values import ValueParams

__all__ = ["AlphaEditParams", "Corpus", "Edit", "Journal", "KeyStats", "METHODS", "MemitParams", "Request",
           "RomeParams", "ValueParams", "WeightDelta", "corpus", "edit", "journal", "key_stats"]
