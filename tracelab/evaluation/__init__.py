"""Scoring edits and other interventions on CounterFact (nested or EasyEdit flat) and zsRE records.

    >>> import tracelab as tl
    >>> res = tl.evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", limit=20, layer=5)
    >>> print(res.table())

Both metric conventions are reported and named: `rome.*` (probability comparisons, Meng et al.
2022) and `easyedit.*` (teacher-forced token accuracy). See `metrics`.
"""

from .api import EvalResult, evaluate, score_record
from .metrics import n_gram_entropy, score_targets
from .records import Record, read_records, to_record

__all__ = ["EvalResult", "Record", "evaluate", "n_gram_entropy", "read_records", "score_record", "score_targets",
           "to_record"]
