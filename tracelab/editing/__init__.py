"""Editing: any registered method, applied as reversible Changes recorded in the model's journal.

    >>> import tracelab as tl
    >>> e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of",
    ...             target="Rome", method="rome", layer=5)
    >>> tl.journal(model).edits, e.info["norms"]
    >>> e.undo()                                   # back, bit for bit

Modules: `api` (edit), `registry` (Method, register, names), `changes` (ParamDelta, HookPatch,
PromptContext), `journal` (Edit, Journal, transactions), `guard` (the collapse guard), `requests` (Request), `checkpoints` (trained editors on
disk), `methods/` (one module per method), `toolkit/` (what the locate-then-edit methods share: key statistics and their
corpus, k*, v*/z, float64 solves).
"""

from . import registry
from .api import edit
from .changes import Change, HookPatch, ParamDelta, PromptContext
from .guard import CollapseRefused, Guard
from .patches import PatchModule, register_patch
from .journal import Edit, EditDelta, Journal, journal
from .methods import (AlphaEditParams, FTLParams, FTMParams, FTParams, GraceParams, IKEParams, KEParams, KNParams,
                      LoRAParams, MemitParams, MendParams, RomeParams, SeracParams, TPatcherParams, WiseParams)
from .registry import Method, register
from .requests import Request
from .toolkit.corpus import Corpus, corpus
from .toolkit.stats import KeyStats, key_stats
from .toolkit.values import ValueParams

__all__ = ["AlphaEditParams", "Change", "CollapseRefused", "Corpus", "Edit", "EditDelta", "FTLParams", "FTMParams", "FTParams",
           "GraceParams", "Guard", "HookPatch", "IKEParams", "Journal", "KEParams", "KNParams", "KeyStats", "LoRAParams", "MemitParams", "MendParams", "Method", "ParamDelta",
           "PatchModule", "PromptContext", "Request", "RomeParams", "SeracParams", "TPatcherParams", "ValueParams", "WiseParams", "corpus",
           "edit", "journal", "key_stats", "register", "register_patch", "registry"]
