"""zsRE question answering (Levy et al. 2017, as MEND and EasyEdit use it): token accuracy.

    >>> suite = get_suite("zsre")
    >>> cases = suite.read("../shared/data/zsre-sample.json")
    >>> suite.score(model, cases[0])      # ({'easyedit.reliability': …, 'easyedit.generality': …}, reference)

EasyEdit's definitions: reliability = teacher-forced token accuracy of the new answer after the
question; generality = the same after the rephrased question; locality = share of the unrelated
(Natural Questions) prompt's answer-position argmax tokens that are unchanged by the edit.
"""

from __future__ import annotations

from statistics import mean

from ..metrics import score_targets
from ..records import Record
from . import Suite, register_suite


@register_suite
class ZsRE(Suite):
    name = "zsre"
    default_file = "zsre-sample.json"

    def score(self, model, case: Record, reference=None):
        r = case.request
        prompts = [r.text, *case.paraphrases, *(p for p, _ in case.neighbours)]
        targets = [r.target] * (1 + len(case.paraphrases)) + [a for _, a in case.neighbours]
        s = score_targets(model, prompts, targets)
        n_p = len(case.paraphrases)
        argmax = s.argmax[1 + n_p:]
        locality = (mean(float(a == b) for x, y in zip(argmax, reference) for a, b in zip(x, y))
                    if reference is not None and argmax else None)
        return {"easyedit.reliability": s.accuracy[0],
                "easyedit.generality": mean(s.accuracy[1:1 + n_p]) if n_p else None,
                "easyedit.locality": locality, "prob_new": s.prob[0]}, argmax
