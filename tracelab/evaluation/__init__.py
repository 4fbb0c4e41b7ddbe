"""Scoring edits and other interventions: suites of cases, a runner with three modes, metrics.

    >>> import tracelab as tl
    >>> res = tl.evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", limit=20, layer=5)
    >>> print(res.table())

Modules: `api` (evaluate), `compare` (every method, one table), `runner` (single / batch /
sequential), `suites/` (counterfact, zsre, known, robustness; "a+b" combines; `register_suite`
for more), `records` (the file formats), `metrics` (teacher-forced scores, generation entropy),
`result` (EvalResult). Metric names keep their convention: `rome.*` (probability comparisons, Meng
et al. 2022), `easyedit.*` (teacher-forced token accuracy), `known.*` (facts to keep), `robust.*`.
"""

from .api import evaluate
from .compare import Comparison, compare
from .metrics import n_gram_entropy, score_targets
from .records import Record, read_records, to_record
from .result import EvalResult
from .suites import Suite, get_suite, register_suite, suite_names
from .suites.counterfact import score_record

__all__ = ["Comparison", "EvalResult", "Record", "Suite", "compare", "evaluate", "get_suite", "n_gram_entropy",
           "read_records", "register_suite", "score_record", "score_targets", "suite_names", "to_record"]
