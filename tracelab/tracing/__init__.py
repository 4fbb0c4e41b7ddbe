"""Causal tracing (Meng et al. 2022): where in the network a model recalls a fact.

    >>> r = tracelab.trace(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
    >>> r.figure(); r.peak("mlp"); r.save("eiffel.pdf")
    >>> est = tracelab.attribute(model, prompt, subject)           # one forward+backward per sample
    >>> avg = tracelab.trace_dataset(model, facts, out="traces/")  # Figure 2: averages by token class
"""

from .api import attribute, trace
from .corruption import GaussianNoise, TokenReplace, embedding_std
from .dataset import DatasetTrace, trace_dataset
from .neurons import NeuronAttribution, knowledge_neurons
from .result import TraceResult

__all__ = ["DatasetTrace", "GaussianNoise", "NeuronAttribution", "TokenReplace", "TraceResult", "attribute",
           "embedding_std", "knowledge_neurons", "trace", "trace_dataset"]
