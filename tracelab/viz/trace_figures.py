"""Figures of causal traces: the three-panel heatmap of one fact, line plots of dataset averages.

    >>> trace_figure(result).show()                  # hidden state | MLP | attention
    >>> dataset_figure(average).show()               # Figure 2: effect per layer by token class

Sized for a single paper column (≈ 3.3 in): 500 px wide layouts with 10–11 px text, exported at
3× for PNG.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..tracing.names import KIND_TITLES, SYMBOLS

COLOURS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
LINE_COLOURS = {"resid": "#6a51a3", "mlp": "#238b45", "attn": "#cb181d"}
CLASS_NAMES = {"first_subject": "first subject", "middle_subject": "middle subject",
               "last_subject": "last subject", "first_subsequent": "first subsequent",
               "further": "further tokens", "last": "last token"}
CLASS_COLOURS = ["#9ecae1", "#4292c6", "#08306b", "#fdae6b", "#a1d99b", "#e31a1c"]
FONT = dict(family="Arial, Helvetica, sans-serif", size=10, color="black")


def _label(token: str, subject: bool) -> str:
    text = token.replace("\n", "\\n").strip() or repr(token)
    return f"{text}*" if subject else text


def trace_figure(result, kinds=None, *, width: int = 520, title: bool = True) -> go.Figure:
    """Heatmaps of the mean restored score, one panel per kind (layer on x, token on y).

        >>> fig = trace_figure(result); fig.write_image("eiffel.pdf")

    Subject tokens are starred; each panel's colour scale runs from the corrupted score (white)
    to the panel's maximum; the colour bar under each panel is labelled with the metric.
    """
    kinds = list(kinds or result.kinds)
    n_tokens, n_layers = len(result.tokens), result.n_layers
    a, b = result.span
    labels = [_label(t, a <= i < b) for i, t in enumerate(result.tokens)]
    metric = SYMBOLS[result.metric]
    target = result.target.strip() or repr(result.target)
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.035,
                        subplot_titles=[f"restore {KIND_TITLES[k]}" for k in kinds])
    low = result.p_corrupted
    for col, kind in enumerate(kinds, 1):
        z = result.mean(kind).T  # [n_tokens, n_layers]
        exact = result.exact.get(kind)
        note = None if exact is None or bool(exact.all()) else exact.T.tolist()
        domain = fig.layout[f"xaxis{col if col > 1 else ''}"].domain
        fig.add_trace(go.Heatmap(
            z=z.tolist(), x=list(range(n_layers)), y=list(range(n_tokens)), colorscale=COLOURS[kind],
            zmin=min(low, float(z.min())), zmax=max(float(z.max()), low + 1e-6), xgap=0, ygap=0,
            customdata=note, hovertemplate=f"layer %{{x}}, token %{{y}}<br>{metric}=%{{z:.3f}}<extra>{KIND_TITLES[kind]}</extra>",
            colorbar=dict(orientation="h", x=(domain[0] + domain[1]) / 2, xanchor="center", y=-0.2, yanchor="top",
                          len=(domain[1] - domain[0]) * 0.95, thickness=8, tickfont=dict(size=9),
                          title=dict(text=f"{metric}({target})", side="bottom", font=dict(size=10)), nticks=4),
        ), row=1, col=col)
        fig.update_xaxes(title_text="layer", title_standoff=2, title_font=dict(size=10), tickfont=dict(size=9),
                         row=1, col=col, ticks="outside", ticklen=2,
                         dtick=max(1, round(n_layers / 3 / 5) * 5) if n_layers > 10 else 1, showgrid=False)
    fig.update_yaxes(tickvals=list(range(n_tokens)), ticktext=labels, autorange="reversed", showgrid=False,
                     ticks="", tickfont=dict(size=10), row=1, col=1)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    height = 150 + 17 * n_tokens
    prompt = result.prompt if len(result.prompt) <= 60 else result.prompt[:57] + "…"
    fig.update_layout(
        width=width, height=height, font=FONT, plot_bgcolor="white", paper_bgcolor="white",
        margin=dict(l=10, r=10, t=48 if title else 22, b=80),
        title=dict(text=f"{prompt} → {target}", x=0.5, y=0.985, yanchor="top", font=dict(size=11)) if title else None,
    )
    for annotation in fig.layout.annotations:  # the subplot titles
        annotation.font = dict(size=10)
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def dataset_figure(average, kinds=None, *, width: int = 520, bands: bool = True) -> go.Figure:
    """Average indirect effect per layer for each token class (lines) and kind (panels), with
    95 % bands: the paper's Figure 2.

        >>> fig = dataset_figure(tracelab.trace_dataset(model, facts)); fig.write_image("avg.pdf")
    """
    kinds = list(kinds or average.curves)
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[f"restore {KIND_TITLES[k]}" for k in kinds])
    for col, kind in enumerate(kinds, 1):
        mean = average.mean(kind)
        low, high = average.ci(kind)
        layers = list(range(mean.shape[1]))
        for i, name in enumerate(average.classes):
            if mean[i].isnan().all():
                continue
            colour = CLASS_COLOURS[i % len(CLASS_COLOURS)]
            if bands:
                fig.add_trace(go.Scatter(x=layers + layers[::-1], y=high[i].tolist() + low[i].tolist()[::-1],
                                         fill="toself", fillcolor=_rgba(colour, 0.18), line=dict(width=0),
                                         hoverinfo="skip", showlegend=False), row=1, col=col)
            fig.add_trace(go.Scatter(x=layers, y=mean[i].tolist(), mode="lines", name=CLASS_NAMES.get(name, name),
                                     line=dict(color=colour, width=1.5), legendgroup=name,
                                     showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="layer", title_standoff=2, title_font=dict(size=10), tickfont=dict(size=9),
                         row=1, col=col, showgrid=False, ticks="outside")
        fig.update_yaxes(showgrid=True, gridcolor="#eee", zeroline=True, zerolinecolor="#999", row=1, col=col)
    fig.update_yaxes(title_text="average indirect effect", title_standoff=2, title_font=dict(size=10), row=1, col=1)
    fig.update_yaxes(tickfont=dict(size=9))
    fig.update_layout(
        width=width, height=260, font=FONT, plot_bgcolor="white", paper_bgcolor="white",
        margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=f"average over {average.n_facts} facts", x=0.5, y=0.98, yanchor="top", font=dict(size=11)),
        legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.25, yanchor="top", font=dict(size=9)),
    )
    for annotation in fig.layout.annotations:
        annotation.font = dict(size=10)
    return fig
