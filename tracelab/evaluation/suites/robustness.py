"""Robustness: is the edited fact still given when it is asked in other ways?

    >>> tl.evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", suite="robustness", limit=20)
    >>> get_suite("robustness").variants(case)      # {"plain": ..., "long_prefix": ..., "typo": ..., ...}

Every edit record (CounterFact or zsRE) is asked five ways, each scored on the model as it is:

    plain        the edit's prompt
    long_prefix  a long unrelated paragraph (`UNRELATED`, ~90 tokens), then the prompt
    typo         two adjacent letters of the subject swapped (`typo`)
    doubting     "I'm not sure, but I think " before the prompt
    question     "Question: {prompt} what?\\nAnswer:" (a zsRE prompt, already a question, keeps its "?")

`robust.<way>` is 1 when the model gives the new answer: with a true answer in the record, the
new one is likelier (ROME's efficacy comparison, mean per-token NLL); without one (zsRE), every
token of the new answer is the argmax (teacher-forced). Reported as shares of cases, before and
after the edit: the after column is the share that still gives the new answer.
"""

from __future__ import annotations

import re

from ...editing.requests import Request
from ..metrics import score_targets
from ..records import Record, as_question
from . import Suite, register_suite

UNRELATED = ("The recipe calls for two cups of flour, a pinch of salt and three eggs, beaten until the mixture "
             "is smooth. Let the dough rest for an hour in a cool place before rolling it out on a floured "
             "board. Meanwhile the weather had turned: a light rain fell over the harbour, and the fishing "
             "boats came in early, their crews hurrying to tie them up before dark. ")
DOUBT = "I'm not sure, but I think "
WAYS = ("plain", "long_prefix", "typo", "doubting", "question")


def typo(subject: str) -> str:
    """The subject with two adjacent letters swapped in the middle of its longest word (a letter
    doubled when no word has 4 letters), so that the subject's tokens change.

        >>> typo("Danielle Darrieux"), typo("Paris"), typo("Rio")
        ('Danilele Darrieux', 'Pairs', 'Rioo')
    """
    words = re.findall(r"[^\W\d_]+", subject)
    longest = max(words, key=len, default="")
    if len(longest) < 4:
        at = subject.rfind(longest) + len(longest) - 1 if longest else len(subject) - 1
        return subject[:at + 1] + subject[at] + subject[at + 1:]
    start, i = subject.rfind(longest), len(longest) // 2
    swapped = longest[:i] + longest[i + 1] + longest[i] + longest[i + 2:]
    if swapped == longest:  # a doubled letter in the middle: swap the pair before it
        swapped = longest[:i - 1] + longest[i] + longest[i - 1] + longest[i + 1:]
    return subject[:start] + swapped + subject[start + len(longest):]


def variants(request: Request) -> dict[str, str]:
    """The edit's prompt asked each of the suite's ways (see the module doc)."""
    text = request.text
    return {"plain": text, "long_prefix": UNRELATED + text,
            "typo": request.prompt.replace("{}", typo(request.subject)), "doubting": DOUBT + text,
            "question": as_question(text)}


@register_suite
class Robustness(Suite):
    """The edit asked five ways (see the module doc); reads CounterFact and zsRE records."""

    name = "robustness"
    percent = tuple(f"robust.{w}" for w in WAYS)
    default_file = "counterfact-edit-sample.json"

    @staticmethod
    def variants(case: Record) -> dict[str, str]:
        return variants(case.request)

    def score(self, model, case: Record, reference=None):
        r, asked = case.request, variants(case.request)
        prompts = list(asked.values())
        new = score_targets(model, prompts, [r.target] * len(prompts))
        if r.target_true is None:
            gives = [float(a == 1.0) for a in new.accuracy]
        else:
            true = score_targets(model, prompts, [r.target_true] * len(prompts))
            gives = [float(n < t) for n, t in zip(new.mean_nll, true.mean_nll)]
        return {f"robust.{way}": g for way, g in zip(asked, gives)}, None
