"""Attribution screen and dataset tracing (tiny models: fast)."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab.tracing.dataset as dataset_module
from tracelab.models.hooks import intervene, replace
from tracelab.models.tiny import tiny_model
from tracelab.tracing import DatasetTrace, GaussianNoise, attribute, trace, trace_dataset
from tracelab.tracing.api import prepare
from tracelab.tracing.attribution import estimate_scores

PROMPT, SUBJECT = "The Eiffel Tower is located in", "Eiffel Tower"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_attribution_is_the_first_order_term(llama):
    """Estimate of a resid cell = d/dε metric(corrupt + ε (clean − corrupt)) at ε = 0 (finite difference)."""
    problem = prepare(llama, PROMPT, SUBJECT, kinds="resid", samples=1, corruption=GaussianNoise(std=0.3))
    est = estimate_scores(problem)["resid"][0] - problem.corrupted_scores[0]
    l, t = 1, problem.span[1] - 1
    site = llama.resid(l)
    with torch.no_grad(), llama.record([site]) as clean:
        llama.hf(input_ids=problem.ids)
    with torch.no_grad(), intervene(llama, {llama.embed: problem.corrupted.embed_fn}), llama.record([site]) as corr:
        llama.hf(input_ids=problem.corrupted.ids)
    eps = 1e-3
    value = corr[site.name][0, t] + eps * (clean[site.name][0, t] - corr[site.name][0, t])
    with torch.no_grad(), intervene(llama, {llama.embed: problem.corrupted.embed_fn, site: replace(value, positions=[t])}):
        moved = problem.metric(llama.hf(input_ids=problem.corrupted.ids).logits[:, -1])
    derivative = float(moved[0] - problem.corrupted_scores[0]) / eps
    assert est[l, t].item() == pytest.approx(derivative, rel=0.05, abs=1e-5)


def test_screen_runs_top_cells_exactly(llama):
    kw = dict(corruption=GaussianNoise(std=0.3), samples=2, window=3, progress=False)
    full = trace(llama, PROMPT, SUBJECT, **kw)
    screened = trace(llama, PROMPT, SUBJECT, screen=5, **kw)
    first = full.settings["first_corrupted"]
    for kind in full.kinds:
        exact = screened.exact[kind]
        assert int(exact[:, first:].sum()) == 5 and exact[:, :first].all()
        torch.testing.assert_close(screened.scores[kind][:, exact], full.scores[kind][:, exact], atol=1e-6, rtol=0)
    estimate = attribute(llama, PROMPT, SUBJECT, **kw)
    assert not estimate.exact["mlp"][:, first:].any()
    assert not torch.equal(estimate.scores["mlp"], full.scores["mlp"])


def _known_facts(model):
    facts = []
    for prompt, subject in [("The Eiffel Tower is located in", "Eiffel Tower"),
                            ("Michael Jordan plays the sport of", "Michael Jordan"),
                            ("Mount Fuji is the highest mountain in", "Mount Fuji")]:
        facts.append({"prompt": prompt, "subject": subject, "attribute": model.predict(prompt, 1)[0][0].strip() or "x"})
    facts.append({"prompt": "The Space Needle is in", "subject": "Space Needle", "attribute": "Zanzibar"})  # wrong
    return facts


def test_trace_dataset_resumes_and_averages(llama, tmp_path, monkeypatch):
    facts = _known_facts(llama)
    kw = dict(corruption=GaussianNoise(std=0.3), samples=2, window=2)
    avg = trace_dataset(llama, facts, tmp_path, kinds=("mlp", "resid"), progress=False, **kw)
    assert avg.skipped >= 1 and 1 <= avg.n_facts <= 3
    assert avg.mean("mlp").shape == (6, llama.n_layers)
    low, high = avg.ci("resid")
    mean = avg.mean("resid")
    assert ((low <= mean + 1e-7) & (mean <= high + 1e-7) | mean.isnan()).all()
    saved = sorted(p.name for p in tmp_path.glob("fact_*.json"))
    assert len(saved) == avg.n_facts
    # a rerun loads every traced fact instead of tracing it again
    monkeypatch.setattr(dataset_module, "trace", lambda *a, **k: pytest.fail("traced again instead of resuming"))
    again = trace_dataset(llama, facts, tmp_path, kinds=("mlp", "resid"), progress=False, **kw)
    torch.testing.assert_close(again.curves["mlp"], avg.curves["mlp"], equal_nan=True)
    avg.save(tmp_path / "average")
    back = DatasetTrace.load(tmp_path / "average")
    torch.testing.assert_close(back.curves["resid"], avg.curves["resid"], equal_nan=True)
    with pytest.raises(ValueError, match="other settings"):
        trace_dataset(llama, facts, tmp_path, kinds=("mlp",), progress=False, **kw)


def test_trace_dataset_bad_input(llama, tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        trace_dataset(llama, [{"subject": "x"}], progress=False)
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"prompt": "The Space Needle is in", "subject": "Space Needle", "attribute": "Zanzibar"}]))
    with pytest.raises(ValueError, match="none of the 1 facts"):
        trace_dataset(llama, path, samples=1, progress=False, corruption=GaussianNoise(std=0.3))
    with pytest.raises(ValueError, match="limit"):
        trace_dataset(llama, [], limit=0, progress=False)
