"""Figures of traces: heatmap structure, dataset line plots, export (html always; png via kaleido, slow)."""

from __future__ import annotations

import pytest
import torch

from tracelab.tracing import DatasetTrace, TraceResult
from tracelab.tracing.names import TOKEN_CLASSES
from tracelab.viz import dataset_figure, save_figure, trace_figure


def _result() -> TraceResult:
    gen = torch.Generator().manual_seed(0)
    scores = {k: torch.rand(3, 12, 6, generator=gen) for k in ("resid", "mlp", "attn")}
    return TraceResult("The Eiffel Tower is in", "Eiffel Tower", " Paris", 7, ["The", " E", "iff", "el", " Tower", " is"],
                       (1, 5), "prob", scores, 0.9, torch.full((3,), 0.05))


def test_trace_figure_has_three_marked_panels():
    fig = trace_figure(_result())
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 3
    assert [t.colorscale[0][1] != t.colorscale[-1][1] for t in heatmaps] == [True] * 3
    assert len({str(t.colorscale) for t in heatmaps}) == 3  # a colour scale per kind
    assert all("p(Paris)" in t.colorbar.title.text for t in heatmaps)
    assert list(fig.layout.yaxis.ticktext) == ["The", "E*", "iff*", "el*", "Tower*", "is"]
    assert "Paris" in fig.layout.title.text and "Eiffel" in fig.layout.title.text
    assert all(len(row) == 12 for row in heatmaps[0].z) and len(heatmaps[0].z) == 6  # token on y, layer on x


def test_dataset_figure_lines_per_class():
    curves = {"mlp": torch.rand(4, 6, 12), "attn": torch.rand(4, 6, 12)}
    curves["mlp"][:, 1] = float("nan")  # no middle subject tokens anywhere: no line
    avg = DatasetTrace(curves, [{}] * 4, 0)
    fig = dataset_figure(avg, bands=False)
    names = [t.name for t in fig.data if t.showlegend]
    assert len(names) == len(TOKEN_CLASSES) - 1 and "middle subject" not in names


def test_html_export_is_self_contained(tmp_path):
    path = save_figure(trace_figure(_result()), tmp_path / "t.html")
    text = path.read_text()
    assert "Plotly.newPlot" in text and "<script src=" not in text and len(text) > 1_000_000  # plotly.js inline


def test_export_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="cannot export"):
        save_figure(trace_figure(_result()), tmp_path / "t.jpg")


@pytest.mark.slow
def test_png_and_pdf_export(tmp_path):
    result = _result()
    png, pdf = result.save(tmp_path / "t.png"), result.save(tmp_path / "t.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
