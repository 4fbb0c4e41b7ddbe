"""Figures: plotly heatmaps and line plots of traces, and their export for papers.

    >>> from tracelab.viz import trace_figure, save_figure
    >>> save_figure(trace_figure(result), "figures/eiffel.pdf")
"""

from .export import save_figure
from .trace_figures import dataset_figure, trace_figure

__all__ = ["dataset_figure", "save_figure", "trace_figure"]
