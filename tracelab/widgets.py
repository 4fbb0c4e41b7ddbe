"""Jupyter: explore a causal trace and edit the model at a clicked layer, with one click to undo.

    >>> r = tracelab.trace(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower")
    >>> ex = tracelab.widgets.TraceExplorer(model, r)
    >>> ex                                          # the heatmaps; click a cell, type "Rome", press "Edit at layer 14"

Needs `ipywidgets` and `anywidget` (plotly's FigureWidget); everything else is the library's own
calls: `tracelab.edit` at the selected layer, `tracelab.trace` to re-trace, `Edit.undo`.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

import plotly.graph_objects as go

from .models.loading import as_model
from .tracing.names import SYMBOLS
from .editing import registry
from .viz.compare import comparison_rows, related_prompts
from .viz.report import html_table


def method_choices() -> list[str]:
    """The registered methods that edit at a layer (the widget edits at the clicked one)."""
    return [n for n in registry.names() if registry.get(n).layers != "none"]


class TraceExplorer:
    """The trace heatmaps as a live widget: click a cell, edit at its layer, see what changed, undo.

        >>> ex = TraceExplorer(model, r)
        >>> ex.select("mlp", layer=14, token=3)       # what a click on that cell does
        >>> ex.target.value = "Rome"; ex.apply_edit()  # what pressing "Edit at layer 14" does
        >>> ex.undo()                                  # weights back, bit for bit

    Parts (ipywidgets, for layout or tests): `figure` (plotly `FigureWidget`, one heatmap per
    kind, layer on x, token on y), `info` (the selected cell: value, effect, 95 % CI), `target`,
    `method`, `edit_button`, `undo_button`, `output` (before/after top predictions on the prompt,
    a paraphrase and a neighbour). `prompts` overrides those three prompts (label → text; default
    `related_prompts`); `edit_options` go to `tracelab.edit` (e.g. `stats_tokens`); the re-trace
    uses the result's own settings. `result` is the trace on show; `edit` the applied `Edit` or None.
    """

    def __init__(self, model, result, *, prompts: Mapping[str, str] | None = None,
                 edit_options: Mapping[str, Any] | None = None) -> None:
        import ipywidgets as w

        self.model = None if model is None else as_model(model)  # any model object tracelab takes (None: view only)
        self.original, self.result = result, result
        self.prompts = dict(prompts) if prompts is not None else related_prompts(result.prompt, result.subject)
        self.edit_options = dict(edit_options or {})
        self.edit = None
        self.selected: tuple[str, int, int] | None = None
        self.figure = go.FigureWidget(result.figure())
        self._heatmaps = [t for t in self.figure.data if t.type == "heatmap"]
        for trace in self._heatmaps:
            trace.on_click(self._on_click)
        self.info = w.HTML("Click a cell of the heatmap to select a layer and token.")
        self.target = w.Text(description="new target", placeholder="e.g. Rome")
        from .editing.methods import DEFAULT

        self.method = w.Dropdown(options=method_choices(), value=DEFAULT, description="method")
        self.edit_button = w.Button(description="Edit at layer …", disabled=True, button_style="primary")
        self.undo_button = w.Button(description="Undo", disabled=True)
        self.output = w.HTML()
        self.edit_button.on_click(self.apply_edit)
        self.undo_button.on_click(self.undo)
        self.widget = w.VBox([self.figure, self.info, w.HBox([self.target, self.method]),
                              w.HBox([self.edit_button, self.undo_button]), self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ---- selection ---------------------------------------------------------------------------
    def _on_click(self, trace, points, state) -> None:
        """plotly click callback: `points.xs[0]` is the layer, `points.ys[0]` the token position."""
        if points.xs:
            kind = self.result.kinds[self._heatmaps.index(trace)]
            self.select(kind, int(points.xs[0]), int(points.ys[0]))

    def select(self, kind: str, layer: int, token: int) -> None:
        """Select the cell (kind, layer, token): outline it, show its numbers, arm the edit button."""
        r = self.result
        if kind not in r.kinds or not 0 <= layer < r.n_layers or not 0 <= token < len(r.tokens):
            raise ValueError(f"no cell ({kind!r}, layer {layer}, token {token}): kinds {r.kinds}, "
                             f"layers 0..{r.n_layers - 1}, tokens 0..{len(r.tokens) - 1}")
        self.selected = (kind, layer, token)
        low, high = r.ci(kind)
        exact = kind not in r.exact or bool(r.exact[kind][layer, token])
        metric = SYMBOLS[r.metric]
        self.info.value = (
            f"<b>{html.escape(kind)}</b> at layer <b>{layer}</b>, token {token} "
            f"<code>{html.escape(repr(r.tokens[token]))}</code>: restored {metric}({html.escape(r.target.strip())}) = "
            f"{float(r.mean(kind)[layer, token]):.3f}; indirect effect {float(r.effect(kind)[layer, token]):.3f} "
            f"(95 % CI {float(low[layer, token]):.3f} … {float(high[layer, token]):.3f})"
            + ("" if exact else " <i>estimated by attribution, not run</i>"))
        col = r.kinds.index(kind) + 1
        suffix = "" if col == 1 else str(col)
        self.figure.layout.shapes = [dict(type="rect", xref=f"x{suffix}", yref=f"y{suffix}",
                                          x0=layer - 0.5, x1=layer + 0.5, y0=token - 0.5, y1=token + 0.5,
                                          line=dict(color="black", width=2))]
        self.edit_button.description = f"Edit at layer {layer}"
        self.edit_button.disabled = self.edit is not None

    # ---- edit and undo -----------------------------------------------------------------------
    def apply_edit(self, _button=None) -> None:
        """Edit the model at the selected layer so the prompt continues with the new target; show
        top predictions before/after and re-trace. Errors are shown in the widget, not raised."""
        from .viz.story import edit_story

        try:
            if self.selected is None:
                raise ValueError("select a cell first: its layer is where the edit goes")
            if self.edit is not None:
                raise ValueError("an edit is already applied: press Undo first")
            target = self.target.value.strip()
            if not target:
                raise ValueError("type the new target (e.g. Rome) first")
            _, layer, _ = self.selected
            r = self.original
            story = edit_story(self.model, {"subject": r.subject, "prompt": r.prompt}, target,
                               method=self.method.value, layer=layer, trace_result=r, prompts=self.prompts,
                               score=False, keep=True, progress=False, **self.edit_options)
            self.edit = story.edit
            self._show(story.retrace)
            title = registry.get(story.method).title
            self.output.value = (f"<b>{html.escape(title)} edit at layer {layer}</b>: "
                                 f"{html.escape(r.subject)} → {html.escape(target)}"
                                 + html_table(comparison_rows(story.before, story.after)))
        except (ValueError, TypeError) as error:
            self.output.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
        finally:
            self.undo_button.disabled = self.edit is None
            self.edit_button.disabled = self.edit is not None or self.selected is None

    def undo(self, _button=None) -> None:
        """Undo the edit (weights back bit for bit) and show the original trace again."""
        if self.edit is not None:
            self.edit.undo()
            self.edit = None
        self._show(self.original)
        self.output.value = "Edit undone: the model has its original weights."
        self.undo_button.disabled = True
        self.edit_button.disabled = self.selected is None

    def _show(self, result) -> None:
        """Swap the heatmaps' data for `result`'s (same kinds, same shape)."""
        fresh = result.figure()
        with self.figure.batch_update():
            for old, new in zip(self._heatmaps, [t for t in fresh.data if t.type == "heatmap"]):
                old.z, old.zmin, old.zmax, old.colorbar = new.z, new.zmin, new.zmax, new.colorbar
                old.hovertemplate, old.customdata = new.hovertemplate, new.customdata
            self.figure.layout.title = fresh.layout.title
        self.result = result
        if self.selected is not None:
            self.select(*self.selected)
