"""Steering and representation engineering: directions from contrast pairs, applied with the
model's site hooks, scored on a held-out behaviour.

    >>> import tracelab as tl
    >>> s = tl.steering.contrast_set("sentiment")
    >>> v = tl.caa(model, s.pairs, layers=[12])
    >>> with tl.steer(model, v, alpha=4.0):
    ...     model.predict("I thought the movie was")
    >>> tl.steering.generate(model, "I thought the movie was", steer=v, alpha=4.0)
    >>> r = tl.steering.sweep(model, v, [-8, -4, 0, 4, 8], s.behaviour)
    >>> r.figure()
"""

from .apply import generate, steer
from .directions import activations, actadd, caa, differences, reading_accuracy, repe
from .facts import choose_layer, evaluate_steering, fact_vector
from .metrics import BehaviourMetric
from .pairs import CONTRAST_SETS, ContrastSet, Pair, as_pairs, contrast_set, load_pairs, pairs_from, split
from .sweep import SweepResult, sweep
from .vector import SteeringVector

__all__ = [
    "CONTRAST_SETS", "BehaviourMetric", "ContrastSet", "Pair", "SteeringVector", "actadd", "activations",
    "SweepResult", "as_pairs", "caa", "choose_layer", "contrast_set", "differences", "evaluate_steering", "fact_vector", "generate",
    "load_pairs", "pairs_from", "reading_accuracy", "repe", "split", "steer", "sweep",
]
