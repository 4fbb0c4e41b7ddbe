"""A self-contained HTML report: trace heatmaps, the edit, before/after predictions, metrics, settings.

    >>> write_report(model, "report.html")             # trace → ROME at the peak → re-trace → undo
    >>> html = render_report(traces={"before": r}, edits=[e], metrics={"after": {"efficacy": 1.0}})

One file, no network needed to view it: plotly.js is embedded once in the page's head and every
figure is a `<div>` drawn by it.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from ..io import atomic_write

STYLE = """
body { font-family: Arial, Helvetica, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.figure { margin: .5em 0 1em; } .muted { color: #777; font-size: .9em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{_esc(value)}</td>"


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (columns: the union of keys in order, or `columns`); floats to 4 digits.

        >>> html_table([{"metric": "efficacy", "before": 0.0, "after": 1.0}])
    """
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_div(fig: go.Figure, div_id: str) -> str:
    """The `<div>` + script that draws `fig` with the page's embedded plotly.js.

        >>> figure_div(result.figure(), "plot-0")     # '<div id="plot-0" ...><script>...Plotly.newPlot...'
    """
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def edit_rows(edit) -> list[dict[str, Any]]:
    """One row per request of an `Edit`: method, layers, subject, prompt, new target, ‖ΔW‖.

        >>> html_table(edit_rows(e))
    """
    norms = edit.info.get("norms", {})
    norm = ", ".join(f"L{l}: {float(n):.3g}" for l, n in norms.items()) or "no change (model already said it)"
    return [{"method": edit.method, "layers": ", ".join(map(str, edit.layers)), "subject": r.subject,
             "prompt": r.text, "new target": r.target, "‖ΔW‖": norm} for r in edit.requests]


def metric_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`{column: {metric: value}}` (e.g. before/after) → one row per metric.

        >>> metric_rows({"before": {"p": 0.1}, "after": {"p": 0.9}})   # [{'metric': 'p', 'before': 0.1, 'after': 0.9}]
    """
    names = list(dict.fromkeys(m for col in metrics.values() for m in col))
    return [{"metric": m, **{col: values.get(m, "") for col, values in metrics.items()}} for m in names]


def render_report(*, title: str = "tracelab report", traces: Mapping[str, Any] | None = None,
                  edits: Sequence[Any] = (), predictions: Sequence[Mapping[str, Any]] = (),
                  metrics: Mapping[str, Mapping[str, Any]] | None = None,
                  figures: Mapping[str, go.Figure] | None = None, settings: Mapping[str, Any] | None = None,
                  notes: str = "", comparison=None) -> str:
    """The report as one HTML string (plotly.js embedded; opens offline).

        >>> page = render_report(traces={"before the edit": r}, edits=[e],
        ...                      metrics={"before": {"p(Rome)": 0.0}, "after": {"p(Rome)": 0.9}},
        ...                      settings={"samples": 10})
        >>> Path("report.html").write_text(page)

    `traces`: caption → `TraceResult` (drawn with its `figure()`); `edits`: `Edit`s (summary table);
    `predictions`: rows for a before/after table; `metrics`: `{column: {metric: value}}`;
    `figures`: caption → any plotly figure; `settings`: shown as JSON; `comparison`: a
    `tl.compare` result (`evaluation.compare.Comparison`), shown as its table and bar chart.
    """
    parts = [f"<h1>{_esc(title)}</h1>",
             f'<p class="muted">written {datetime.datetime.now().isoformat(timespec="seconds")}</p>']
    if notes:
        parts.append(f"<p>{_esc(notes)}</p>")
    plots = 0
    for caption, result in (traces or {}).items():
        parts.append(f"<h2>Causal trace: {_esc(caption)}</h2>")
        parts.append(f'<p class="muted">{_esc(result.prompt)} → {_esc(result.target)}; subject '
                     f'{_esc(result.subject)!s}; p(clean) = {result.p_clean:.3f}, p(corrupted) = '
                     f'{result.p_corrupted:.3f}; MLP peak at layer {result.peak("mlp") if "mlp" in result.kinds else "–"}</p>')
        parts.append(f'<div class="figure">{figure_div(result.figure(width=760), f"plot-{plots}")}</div>')
        plots += 1
    if edits:
        parts.append("<h2>Edit</h2>" + html_table([row for e in edits for row in edit_rows(e)]))
    if predictions:
        parts.append("<h2>Top predictions before and after</h2>" + html_table(predictions))
    if metrics:
        parts.append("<h2>Metrics</h2>" + html_table(metric_rows(metrics)))
    if comparison is not None:
        rows = [{"method": name, **row} for name, row in comparison.rows.items()]
        rows += [{"method": name, "efficacy": f"not run: {info['error']}"} for name, info in comparison.methods.items()
                 if "error" in info]
        meta = comparison.meta
        parts.append("<h2>Every method compared</h2>" + html_table(rows) +
                     f'<p class="muted">{_esc(meta.get("cases"))} cases of {_esc(meta.get("records"))}, mode '
                     f'{_esc(meta.get("mode"))}; scores in %, fluency in bits (n-gram entropy), robustness: the '
                     "share of rephrased asks (long prefix, typo, doubt, question) that give the new answer</p>")
        parts.append(f'<div class="figure">{figure_div(comparison.figure(), f"plot-{plots}")}</div>')
        plots += 1
    for caption, fig in (figures or {}).items():
        parts.append(f'<h2>{_esc(caption)}</h2><div class="figure">{figure_div(fig, f"plot-{plots}")}</div>')
        plots += 1
    if settings:
        parts.append("<h2>Settings</h2><pre>" + _esc(json.dumps(settings, indent=2, default=str)) + "</pre>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<style>{STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>'
            f'<body>{"".join(parts)}</body></html>\n')


def save_report(page: str, out: str | os.PathLike) -> Path:
    """Write `page` to `out` atomically (complete or absent); returns the path.

        >>> save_report(render_report(traces={"Eiffel": r}), "out/report.html")
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML page: give a path ending in .html, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


def write_report(model, out: str | os.PathLike = "report.html", *, fact: Mapping[str, str] | None = None,
                 new_target: str = "Rome", method: str | None = None, samples: int = 3,
                 dtype: str | None = "auto", kinds: Sequence[str] = ("resid", "mlp", "attn"),
                 stats_tokens: int = 20_000, story=None, comparison=None, progress: bool = True) -> Path:
    """Run the main job on one fact and write the report: trace → edit at the MLP peak → re-trace → undo.

        >>> write_report(tracelab.load_model(), "report.html")   # the Eiffel Tower → Rome
        PosixPath('report.html')
        >>> write_report(model, "report.html", story=edit_story(model))   # a story already told

    `fact`: `{"subject", "prompt", "paraphrase", "neighbour"}` (default: the Eiffel Tower, see
    `tracelab.viz.story.eiffel`); `method`: a registered editing method (default: the registry's);
    `samples`, `dtype`, `kinds` go to both traces; `stats_tokens` to the edit's key statistics.
    `story`: the trace → edit → compare already run (`viz.story.edit_story`, with a re-trace),
    else it is run here. `comparison`: a `tl.compare` result, or the path of a saved one, for a
    section comparing every method. The model's weights are restored (bit for bit) before it returns, even
    on error. Returns the path of the written page.
    """
    from .compare import comparison_metrics, comparison_rows
    from .story import edit_story, eiffel

    if comparison is not None and not hasattr(comparison, "rows"):
        from ..evaluation.compare import Comparison

        comparison = Comparison.load(comparison)  # before the story runs: a bad path fails fast
    if story is None:
        if fact is not None:
            missing = [k for k in ("subject", "prompt", "paraphrase", "neighbour") if k not in fact]
            if missing:
                raise ValueError(f"fact lacks {missing}: give subject, prompt, paraphrase and neighbour, "
                                 f"e.g. {eiffel()}")
        story = edit_story(model, fact, new_target, method=method, samples=samples, dtype=dtype, kinds=kinds,
                           stats_tokens=stats_tokens, progress=progress)
    if story.retrace is None:
        raise ValueError("the report shows the trace after the edit: tell the story with retrace=True")
    metrics = comparison_metrics(story.before, story.after)
    metrics["before"].update(story.scores.get("pre", {}))
    metrics["after"].update(story.scores.get("post", {}))
    from ..editing import registry

    e, target = story.edit, story.new_target.strip()
    title = registry.get(e.method).title
    settings = {"model": model.name, "fact": story.fact, "new target": story.new_target, "method": e.method,
                "layer": story.layer, "trace": story.trace.settings, "edit": e.hparams, "seconds": story.seconds}
    page = render_report(title=f"tracelab: {story.fact['subject']} → {target}",
                         traces={"before the edit": story.trace,
                                 f"after the {title} edit at layer {story.layer}": story.retrace},
                         edits=[e], predictions=comparison_rows(story.before, story.after), metrics=metrics,
                         settings=settings, comparison=comparison,
                         notes=f"{model.name}: where the model recalls the fact, and what editing it there changes.")
    return save_report(page, out)
