"""CounterFact (Meng et al. 2022), scored in both conventions.

    >>> suite = get_suite("counterfact", generation=True)
    >>> metrics, ref = suite.score(model, case)            # rome.* and easyedit.* metrics

- `rome.*`: the new answer against the true one (mean per-token NLL of each) on the edit prompt
  (efficacy), its paraphrases and its neighbourhood prompts (which should keep the true answer);
  scores are shares, magnitudes differences of probabilities. `rome.generation_entropy` (with
  `generation=True`): ROME's fluency, n-gram entropy of greedy generations; `rome.reference_score`:
  ROME's consistency, TF-IDF cosine of those generations with text about the new answer (written
  from the knowledge graph, `evaluation.consistency`; None when the graph has none).
- `easyedit.*`: teacher-forced token accuracy of the new answer on the prompt (reliability) and
  the paraphrases (generality); locality is the agreement of the neighbour prompts' argmax tokens
  with the unedited model's (the reference).
"""

from __future__ import annotations

from statistics import mean

from ..consistency import reference_score
from ..metrics import generate, n_gram_entropy, score_targets
from ..records import Record
from . import Suite, register_suite


def score_record(model, record: Record, reference: list[list[int]] | None = None,
                 generation: bool = False) -> tuple[dict[str, float | None], list[list[int]]]:
    """Both conventions' metrics of one record on the model as it is now, and the argmax tokens on
    its neighbour prompts (pass those of the unedited model as `reference` for locality)."""
    r = record.request
    new, true = r.target, r.target_true
    prompts, targets = [r.text], [new]
    prompts += record.paraphrases
    targets += [new] * len(record.paraphrases)
    prompts += [p for p, _ in record.neighbours]
    targets += [a for _, a in record.neighbours]
    compare = true is not None
    if compare:  # the same prompts with the other answer, for ROME's comparisons
        prompts += [r.text, *record.paraphrases, *(p for p, _ in record.neighbours)]
        targets += [true] * (1 + len(record.paraphrases)) + [new] * len(record.neighbours)
    s = score_targets(model, prompts, targets)
    n_p, n_n = len(record.paraphrases), len(record.neighbours)
    base = 1 + n_p + n_n
    nb_argmax = s.argmax[1 + n_p:base]
    m: dict[str, float | None] = {
        "easyedit.reliability": s.accuracy[0],
        "easyedit.generality": mean(s.accuracy[1:1 + n_p]) if n_p else None,
        "easyedit.locality": (mean(float(a == b) for x, y in zip(nb_argmax, reference) for a, b in zip(x, y))
                              if reference is not None and n_n else None),
        "prob_new": s.prob[0],
    }
    if compare:
        p, o = s.prob, base  # o: offset of the "other answer" block
        m["prob_true"] = p[o]
        m["rome.efficacy_score"] = float(s.mean_nll[0] < s.mean_nll[o])
        m["rome.efficacy_magnitude"] = p[0] - p[o]
        if n_p:
            m["rome.paraphrase_score"] = mean(float(s.mean_nll[1 + i] < s.mean_nll[o + 1 + i]) for i in range(n_p))
            m["rome.paraphrase_magnitude"] = mean(p[1 + i] - p[o + 1 + i] for i in range(n_p))
        if n_n:
            m["rome.neighborhood_score"] = mean(float(s.mean_nll[1 + n_p + i] < s.mean_nll[o + 1 + n_p + i])
                                                for i in range(n_n))
            m["rome.neighborhood_magnitude"] = mean(p[1 + n_p + i] - p[o + 1 + n_p + i] for i in range(n_n))
    if generation:
        texts = generate(model, record.generation_prompts or [r.text])
        m["rome.generation_entropy"] = mean(n_gram_entropy(t) for t in texts)
        m["rome.reference_score"] = reference_score(texts, new)
    return m, nb_argmax


@register_suite
class CounterFact(Suite):
    """CounterFact records (ROME's nested format or EasyEdit's flat one); see the module doc."""

    name = "counterfact"
    default_file = "counterfact-edit-sample.json"

    def score(self, model, case: Record, reference=None):
        return score_record(model, case, reference, self.generation)
