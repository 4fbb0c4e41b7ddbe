"""Known facts (known_1000's shape, or the built-in facts): does the model still know them?

    >>> suite = get_suite("known")
    >>> cases = suite.read()                          # the built-in facts the embedded model knows
    >>> tl.evaluate(model, "known", edit)             # unrelated facts before/after an edit

Each case is a fact (subject, prompt, attribute), not an edit: the suite scores facts the model
should keep under an intervention made elsewhere (an `Edit`, a steering vector). Metrics:
`known.top1` (the attribute's first token is the top-1 next token), `known.accuracy` (teacher-
forced token accuracy of the whole attribute) and `known.prob` (P(attribute), all its tokens).
"""

from __future__ import annotations

from ...data import builtin_facts
from ..metrics import score_targets
from ..records import Record
from . import Suite, register_suite


@register_suite
class KnownFacts(Suite):
    name = "known"
    edits = False
    percent = ("known.top1", "known.accuracy")

    def read(self, source=None, limit=None) -> list[Record]:
        return super().read(builtin_facts() if source is None else source, limit)

    def score(self, model, case: Record, reference=None):
        r = case.request
        s = score_targets(model, [r.text], [r.target])
        first = model.target_ids(r.text, r.target)[0]
        return {"known.top1": float(s.argmax[0][0] == first), "known.accuracy": s.accuracy[0],
                "known.prob": s.prob[0]}, None
