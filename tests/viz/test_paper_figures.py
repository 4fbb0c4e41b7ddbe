"""Paper figures: one single-column style, exported as PDF/SVG/PNG; the committed figures/ match it."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import torch

from tracelab.cli import build_parser
from tracelab.steering.sweep import SweepResult
from tracelab.tracing import DatasetTrace, TraceResult
from tracelab.viz import paper
from tracelab.viz.compare import Snapshot
from tracelab.viz.story import eiffel

FIGURES = Path(__file__).resolve().parents[2] / "figures"
NAMES = ("trace", "average", "edit", "steering")
BENCHMARKED = ("average_known",)  # benchmarks/figure2.py: Figure 2 over known_1000, in the same style
EIFFEL = eiffel()


def _figures() -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = ["The", " E", "iffel", " Tower", " is", " located", " in", " the", " city", " of"]
    r = TraceResult(EIFFEL["prompt"], EIFFEL["subject"], " Paris", 7, tokens, (0, 4), "prob",
                    {k: torch.rand(3, 30, 10, generator=g) for k in ("resid", "mlp", "attn")}, 0.7, torch.full((3,), 0.02))
    avg = DatasetTrace({k: torch.rand(5, 6, 30, generator=g) for k in ("resid", "mlp", "attn")}, [{}] * 5, 0)
    prompts = {k: EIFFEL[k] for k in ("prompt", "paraphrase", "neighbour")}
    before = Snapshot(prompts, {}, {k: {"Paris": 0.7, "Rome": 0.01} for k in prompts})
    after = Snapshot(prompts, {}, {k: {"Paris": 0.1, "Rome": 0.8} for k in prompts})
    alphas = torch.tensor([-4.0, 0.0, 4.0])
    sweep = SweepResult(alphas, torch.rand(3, 5, generator=g), alphas.abs(), 3 + alphas.abs(), [], {"metric": "m"})
    return {"trace": paper.figure_trace(r), "average": paper.figure_average(avg),
            "edit": paper.figure_edit(before, after), "steering": paper.figure_steering(sweep)}


def test_one_style_for_every_figure():
    figs = _figures()
    assert list(figs) == list(NAMES)
    for name, fig in figs.items():
        assert fig.layout.width == paper.WIDTH and fig.layout.font.size == paper.FONT["size"], name
        assert 150 <= fig.layout.height <= 320, name
        assert all(a.font.size == paper.FONT["size"] for a in fig.layout.annotations), name
    assert [t.name for t in figs["steering"].data] == ["behaviour (mean ± sd)", "KL to unsteered", "NLL of steered text"]
    bars = [t for t in figs["edit"].data if t.type == "bar"]
    assert len(bars) == 4 and bars[0].y == (0.7, 0.7, 0.7) and bars[3].y == (0.8, 0.8, 0.8)


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown figure format"):
        paper.export_figures(_figures(), tmp_path, formats=("jpg",))
    assert list(tmp_path.iterdir()) == []


def test_cli_registers_figures_and_report():
    args = build_parser().parse_args(["figures", "--out", "x", "--facts", "3", "--formats", "png"])
    assert (args.out, args.facts, args.formats) == ("x", 3, ["png"])
    args = build_parser().parse_args(["report", "--out", "r.html", "--target", "Berlin"])
    assert (args.out, args.target, args.method) == ("r.html", "Berlin", "rome")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def _pdf_width_pt(path: Path) -> float:
    box = re.search(rb"/MediaBox\s*\[\s*[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s*\]", path.read_bytes())
    assert box, path
    return float(box.group(1))


@pytest.mark.slow
def test_export_writes_every_format_at_column_width(tmp_path):
    paths = paper.export_figures(_figures(), tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.{f}" for n in NAMES for f in paper.FORMATS)
    for name in NAMES:
        assert _png_size(tmp_path / f"{name}.png")[0] == paper.WIDTH * paper.PNG_SCALE
        assert abs(_pdf_width_pt(tmp_path / f"{name}.pdf") - paper.WIDTH * 0.75) < 1  # 3.33 in
        assert re.search(rf'<svg[^>]*width="{paper.WIDTH}"', (tmp_path / f"{name}.svg").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_committed_figures_match_the_current_style():
    """figures/ holds what `tracelab figures` writes today (regenerate with `make figures`) and the
    benchmark's Figure 2, all in the paper style."""
    assert sorted(p.name for p in FIGURES.iterdir() if not p.name.startswith(".")) == \
        sorted(f"{n}.{f}" for n in NAMES + BENCHMARKED for f in paper.FORMATS)
    for name in NAMES + BENCHMARKED:
        assert _png_size(FIGURES / f"{name}.png")[0] == paper.WIDTH * paper.PNG_SCALE
        assert abs(_pdf_width_pt(FIGURES / f"{name}.pdf") - paper.WIDTH * 0.75) < 1
        assert re.search(rf'<svg[^>]*width="{paper.WIDTH}"', (FIGURES / f"{name}.svg").read_text())
