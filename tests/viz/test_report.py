"""The HTML report: self-contained, and it renders in a real browser (headless Chromium, no network)."""

from __future__ import annotations

import re

import pytest
import torch
from plotly.offline import get_plotlyjs
from browser import chromium, render_in_chromium

from tracelab.tracing import TraceResult
from tracelab.viz.compare import Snapshot, comparison_metrics, comparison_rows, edit_bars
from tracelab.viz.report import render_report, save_report, write_report


def _result(seed: int) -> TraceResult:
    gen = torch.Generator().manual_seed(seed)
    scores = {k: torch.rand(3, 12, 6, generator=gen) for k in ("resid", "mlp", "attn")}
    return TraceResult("The Eiffel Tower is in", "Eiffel Tower", " Paris", 7, ["The", " E", "iff", "el", " Tower", " is"],
                       (1, 5), "prob", scores, 0.9, torch.full((3,), 0.05), settings={"samples": 3})


def _snapshots() -> tuple[Snapshot, Snapshot]:
    prompts = {"prompt": "The Eiffel Tower is in", "neighbour": "The <Louvre> & co. are in"}
    before = Snapshot(prompts, {k: [(" Paris", 0.7), (" France", 0.1)] for k in prompts},
                      {k: {"Paris": 0.7, "Rome": 0.01} for k in prompts})
    after = Snapshot(prompts, {"prompt": [(" Rome", 0.9)], "neighbour": [(" Paris", 0.6)]},
                     {"prompt": {"Paris": 0.02, "Rome": 0.9}, "neighbour": {"Paris": 0.6, "Rome": 0.05}})
    return before, after


def _page() -> str:
    before, after = _snapshots()
    return render_report(title="test <report>", traces={"before": _result(0), "after": _result(1)},
                         predictions=comparison_rows(before, after), metrics=comparison_metrics(before, after),
                         figures={"P(target) before and after": edit_bars(before, after)},
                         settings={"samples": 3, "note": "</pre><script>alert(1)</script>"})


def test_report_is_self_contained_and_escaped(tmp_path):
    path = save_report(_page(), tmp_path / "report.html")
    text = path.read_text()
    assert get_plotlyjs() in text  # plotly.js embedded once, in the head
    own = text.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://", own) and own.count("Plotly.newPlot") == 3
    assert "test &lt;report&gt;" in text and "<script>alert(1)" not in text  # user text is escaped
    assert "The &lt;Louvre&gt; &amp; co. are in" in text
    assert re.search(r"<td>P\(Rome \| prompt\)</td><td class=\"num\">0.01</td><td class=\"num\">0.9</td>", text)


def test_save_report_refuses_non_html(tmp_path):
    with pytest.raises(ValueError, match="ending in .html"):
        save_report("<html></html>", tmp_path / "report.pdf")
    assert not (tmp_path / "report.pdf").exists()


@pytest.mark.skipif(chromium() is None, reason="no chromium (make install adds it)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = save_report(_page(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    page = render_in_chromium(path, tmp_path, screenshot=shot)
    assert page.errors == []
    plots = re.findall(r'<div id="plot-\d+" class="[^"]*js-plotly-plot', page.dom)
    assert len(plots) == 3  # every figure was drawn by the embedded plotly.js (no network)
    assert page.dom.count('class="main-svg"') >= 6
    assert len(re.findall(r'class="hm"', page.dom)) == 6  # 2 traces × 3 heatmaps
    assert len(re.findall(r'class="point"', page.dom)) >= 8  # the edit bars
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.skipif(chromium() is None, reason="no chromium (make install adds it)")
def test_browser_probe_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
    errors = render_in_chromium(bad, tmp_path).errors
    assert any("boom" in e for e in errors) and any("undefinedFunction" in e for e in errors)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium (make install adds it)")
def test_write_report_end_to_end(embedded_clean, tmp_path):
    """trace → ROME at the MLP peak → re-trace → undo, written and rendered (MLP only, 2 samples: fast)."""
    path = write_report(embedded_clean, tmp_path / "report.html", kinds=("mlp",), samples=2, progress=False)
    text = path.read_text()
    assert "Causal trace: before the edit" in text and "after the ROME edit at layer" in text
    assert "P(Rome | neighbour)" in text and "easyedit.reliability" in text and "The Louvre" in text
    page = render_in_chromium(path, tmp_path, screenshot=tmp_path / "report.png")
    assert page.errors == [] and len(re.findall(r'class="hm"', page.dom)) == 2
