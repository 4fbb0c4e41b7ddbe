"""Plotly figures for steering: the α sweep and RepE reading accuracy per layer.

    >>> sweep_figure(tl.steering.sweep(model, v, [-4, 0, 4], s.behaviour)).show()
    >>> reading_accuracy_figure(tl.repe(model, s.pairs)).show()
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def sweep_figure(result, title: str | None = None) -> go.Figure:
    """Line chart of a `SweepResult`: behaviour (mean ± std over prompts) against α on the left,
    KL to unsteered and fluency (NLL per token under the unsteered model) on the right.

        >>> fig = sweep_figure(r); fig.write_html("sweep.html")
    """
    alphas = result.alphas.tolist()
    mean, std = result.behaviour.mean(1), result.behaviour.std(1) if result.behaviour.shape[1] > 1 else 0 * result.behaviour.mean(1)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("behaviour", "cost of steering"), horizontal_spacing=0.12)
    fig.add_trace(go.Scatter(x=alphas, y=mean.tolist(), mode="lines+markers", name=result.meta.get("metric", "behaviour"),
                             error_y=dict(type="data", array=std.tolist(), visible=True)), row=1, col=1)
    fig.add_trace(go.Scatter(x=alphas, y=result.kl.tolist(), mode="lines+markers", name="KL to unsteered (nats)"),
                  row=1, col=2)
    if len(result.fluency):
        fig.add_trace(go.Scatter(x=alphas, y=result.fluency.tolist(), mode="lines+markers",
                                 name="NLL of steered text (nats/token)"), row=1, col=2)
    fig.update_xaxes(title_text="α (steering strength)")
    fig.update_yaxes(title_text="log P(positive) − log P(negative)", row=1, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=2)
    vectors = ", ".join(f"{v['method']} @ layers {v['layers']}" for v in result.meta.get("vectors", []))
    fig.update_layout(title=title or f"Steering sweep: {vectors}", template="plotly_white", width=900, height=380,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def reading_accuracy_figure(vector, title: str | None = None) -> go.Figure:
    """Held-out reading accuracy of a RepE vector against layer (the layer to pick is the peak).

        >>> reading_accuracy_figure(tl.repe(model, pairs)).show()
    """
    if not vector.reading_accuracy:
        raise ValueError("this vector has no reading accuracy: build it with repe(..., held_out=0.25)")
    layers = sorted(vector.reading_accuracy)
    fig = go.Figure(go.Scatter(x=layers, y=[vector.reading_accuracy[l] for l in layers], mode="lines+markers"))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    fig.update_layout(title=title or f"Reading accuracy of {vector.method} ({vector.meta.get('source') or 'pairs'})",
                      xaxis_title="layer", yaxis_title="held-out pair accuracy", yaxis_range=[0, 1.05],
                      template="plotly_white", width=600, height=360)
    return fig
