"""Knowledge-neuron figures: layer × neuron attribution, and its layer profile beside a causal trace.

    >>> neuron_figure(knowledge_neurons(model, prompts, "Paris")).show()
    >>> neuron_figure(kn, trace=tl.trace(model, prompts[0], subject)).show()   # two views of where the fact lives
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(family="Arial, Helvetica, sans-serif", size=10, color="black")


def neuron_figure(attribution, trace=None, *, width: int = 900, height: int = 380) -> go.Figure:
    """Mean attribution over the prompts, layer (y) × neuron (x), knowledge neurons circled; with
    `trace` (a `TraceResult` with an "mlp" kind), a second panel compares, per layer, the largest
    neuron attribution with the MLP's indirect effect at the last subject token."""
    mean = attribution.scores.mean(0)                                               # [n_layers, d_mlp]
    cols = 2 if trace is not None else 1
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.7, 0.3][:cols], horizontal_spacing=0.08,
                        subplot_titles=["knowledge attribution (mean over prompts)",
                                        "by layer: neurons vs causal trace"][:cols])
    fig.add_trace(go.Heatmap(z=mean.tolist(), colorscale="Blues", zmin=0, colorbar=dict(title="attr", x=0.66 if cols == 2 else 1.0),
                             hovertemplate="layer %{y}, neuron %{x}<br>attribution %{z:.4f}<extra></extra>"),
                  row=1, col=1)
    if attribution.neurons:
        layers, neurons = zip(*attribution.neurons)
        fig.add_trace(go.Scatter(x=list(neurons), y=list(layers), mode="markers", name="knowledge neurons",
                                 marker=dict(symbol="circle-open", size=10, color="#e31a1c", line=dict(width=2))),
                      row=1, col=1)
    if trace is not None:
        peak = mean.clamp(min=0).amax(1)
        effect = trace.effect("mlp")[:, trace.span[1] - 1]
        fig.add_trace(go.Bar(x=(peak / peak.max().clamp(min=1e-12)).tolist(), y=list(range(len(peak))),
                             orientation="h", name="max neuron attribution (scaled)", marker_color="#4292c6"),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=(effect / effect.abs().max().clamp(min=1e-12)).tolist(),
                                 y=list(range(len(effect))), mode="lines+markers", name="MLP indirect effect (scaled)",
                                 line=dict(color="#238b45")), row=1, col=2)
    fig.update_xaxes(title_text="neuron", row=1, col=1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(width=width, height=height, font=FONT, plot_bgcolor="white", paper_bgcolor="white",
                      title=f"{attribution.target!r} after {len(attribution.prompts)} prompt(s): "
                            f"{len(attribution.neurons)} knowledge neurons",
                      legend=dict(orientation="h", y=-0.2))
    return fig
