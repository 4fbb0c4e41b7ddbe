"""TraceExplorer: a click selects a cell, the Edit button edits at its layer and re-traces, Undo restores."""

from __future__ import annotations

import pytest
import torch

from tracelab import trace
from tracelab.tracing import TraceResult
from tracelab.viz.story import eiffel
from tracelab.widgets import TraceExplorer

EIFFEL = eiffel()


def click(explorer: TraceExplorer, kind: str, layer: int, token: int) -> None:
    """What the browser sends when a heatmap cell is clicked (plotly's js→py points message)."""
    index = explorer.result.kinds.index(kind)
    explorer.figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"xs": [layer], "ys": [token], "point_indexes": [[token, layer]], "trace_indexes": [index]}}})


def _synthetic() -> TraceResult:
    gen = torch.Generator().manual_seed(0)
    scores = {k: torch.rand(3, 30, 10, generator=gen) for k in ("resid", "mlp", "attn")}
    tokens = ["The", " E", "iffel", " Tower", " is", " located", " in", " the", " city", " of"]
    return TraceResult(EIFFEL["prompt"], EIFFEL["subject"], " Paris", 7, tokens, (0, 4), "prob", scores, 0.7,
                       torch.full((3,), 0.02))


def test_click_selects_cell_and_shows_value_and_ci():
    r = _synthetic()
    ex = TraceExplorer(None, r)
    assert ex.edit_button.disabled and ex.selected is None
    click(ex, "mlp", 14, 3)
    assert ex.selected == ("mlp", 14, 3)
    low, high = r.ci("mlp")
    assert f"{float(r.mean('mlp')[14, 3]):.3f}" in ex.info.value
    assert f"{float(low[14, 3]):.3f} … {float(high[14, 3]):.3f}" in ex.info.value and "Tower" in ex.info.value
    assert ex.edit_button.description == "Edit at layer 14" and not ex.edit_button.disabled
    (shape,) = ex.figure.layout.shapes
    assert (shape.xref, shape.x0, shape.y0) == ("x2", 13.5, 2.5)  # outlined in the MLP panel
    with pytest.raises(ValueError, match="no cell"):
        ex.select("mlp", 30, 0)


def test_edit_without_target_is_refused_in_the_widget():
    ex = TraceExplorer(None, _synthetic())
    click(ex, "resid", 5, 3)
    ex.edit_button.click()  # no target typed: message, no edit (the model is never touched)
    assert "new target" in ex.output.value and ex.edit is None and ex.undo_button.disabled


def test_related_prompts_for_the_explorer():
    ex = TraceExplorer(None, _synthetic())
    assert ex.prompts["neighbour"] == "The Louvre is located in the city of"  # same template, same answer
    assert ex.prompts["paraphrase"].endswith(EIFFEL["prompt"])


@pytest.mark.slow
def test_click_edit_retrace_undo_on_the_embedded_model(embedded_clean):
    model = embedded_clean
    # Attribution only (screen=0) keeps the test fast; the re-trace reuses these settings.
    r = trace(model, EIFFEL["prompt"], EIFFEL["subject"], kinds=("resid", "mlp"), samples=2, screen=0, progress=False)
    ex = TraceExplorer(model, r, edit_options={"stats_tokens": 20_000})
    layer = r.peak("mlp")
    click(ex, "mlp", layer, 3)
    weights = {l: model.mlp_out_weight(l).param.detach().clone() for l in range(model.n_layers)}
    ex.target.value = "Rome"
    ex.edit_button.click()
    assert ex.edit is not None, ex.output.value
    changed = [l for l in weights if not torch.equal(weights[l], model.mlp_out_weight(l).param)]
    assert changed == [layer]
    assert model.predict(EIFFEL["prompt"], k=1)[0][0] == " Rome"
    assert "Rome" in ex.output.value and "Louvre" in ex.output.value and "Here is a fact" in ex.output.value
    assert ex.result is not r and ex.result.target == " Rome"  # re-traced, on the new answer
    assert "p(Rome)" in ex.figure.data[0].colorbar.title.text
    assert ex.edit_button.disabled and not ex.undo_button.disabled
    ex.undo_button.click()
    assert all(torch.equal(weights[l], model.mlp_out_weight(l).param) for l in weights)  # bit for bit
    assert ex.edit is None and ex.result is r and "p(Paris)" in ex.figure.data[0].colorbar.title.text
    assert model.predict(EIFFEL["prompt"], k=1)[0][0] == " Paris"
