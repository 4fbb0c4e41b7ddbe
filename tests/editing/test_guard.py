"""The collapse guard: a collapsing edit is refused with nothing changed; a sound one passes with its health."""

from __future__ import annotations

import pytest
import torch

import tracelab as tl
from tracelab.editing import CollapseRefused, FTLParams, Guard, Request, journal
from tracelab.editing.guard import as_guard, weight_change
from tracelab.models.text import perplexity
from tracelab.models.tiny import tiny_model

REQ = Request("The Eiffel Tower", "The city of {}", "Rome")
TEXTS = ("The river runs to the sea past the old mill.", "A dog is a domesticated descendant of the wolf.",
         "Paris is the capital and largest city of France.")
SOUND = FTLParams(epsilon=1e-4, lr=1e-3)        # moves the weight by at most 1e-4 per entry
COLLAPSE = FTLParams(epsilon=10.0, lr=1.0)       # entries of ~0.02 moved by up to 10: ‖ΔW‖ ≫ ‖W‖


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.hf.state_dict().items())


def test_a_sound_edit_passes_with_its_health_measured():
    model = tiny_model("llama")
    base = perplexity(model, list(TEXTS))
    e = tl.edit(model, REQ, method="ft-l", layer=2, params=SOUND, guard=Guard(texts=TEXTS), progress=False)
    health = e.info["health"]
    assert health["base_perplexity"] == pytest.approx(base, rel=1e-6)
    assert health["perplexity"] == pytest.approx(perplexity(model, list(TEXTS)), rel=1e-6)
    (name,) = health["weight_change"]
    d = e.deltas[0].delta
    assert health["weight_change"][name] == pytest.approx(
        float(d.norm() / (model.parameter(name).detach() - d).norm()), rel=1e-5)
    assert health["perplexity"] <= 2 * health["base_perplexity"]
    assert e.hparams["guard"]["max_perplexity_ratio"] == 2.0 and e.hparams["guard"]["texts"] == 3
    e.undo()


def test_a_collapsing_edit_is_refused_and_changes_nothing():
    model = tiny_model("llama")
    before = _state(model)
    with pytest.raises(CollapseRefused, match=r"changed by more than 1 of their norm .*mlp"):
        tl.edit(model, REQ, method="ft-l", layer=2, params=COLLAPSE, guard=Guard(texts=TEXTS), progress=False)
    assert _same(model, before) and not journal(model).edits
    # the same edit without the guard goes through, and is that large
    e = tl.edit(model, REQ, method="ft-l", layer=2, params=COLLAPSE, progress=False)
    assert max(weight_change(model, e.changes).values()) > 1
    e.undo()
    assert _same(model, before)


def test_the_perplexity_bound_refuses_on_its_own():
    model = tiny_model("llama")
    base = perplexity(model, list(TEXTS))
    e = tl.edit(model, REQ, method="ft-l", layer=2, params=COLLAPSE, progress=False)
    after = perplexity(model, list(TEXTS))
    e.undo()
    assert after > 1.01 * base  # the forced edit does raise the held-out perplexity on this model
    before = _state(model)
    loose_weights = Guard(texts=TEXTS, max_weight_change=1e9, max_perplexity_ratio=1.01)
    with pytest.raises(CollapseRefused, match="held-out perplexity .* × the unedited model's"):
        tl.edit(model, REQ, method="ft-l", layer=2, params=COLLAPSE, guard=loose_weights, progress=False)
    assert _same(model, before)


def test_the_base_is_the_unedited_model_and_earlier_edits_count_toward_the_bound():
    model = tiny_model("llama")
    base = perplexity(model, list(TEXTS))
    first = tl.edit(model, REQ, method="ft-l", layer=2, params=FTLParams(epsilon=5.0, lr=1.0), progress=False)
    grown = max(weight_change(model, first.changes).values())
    guard = Guard(texts=TEXTS, max_weight_change=grown * 1.01, max_perplexity_ratio=1e9)
    with pytest.raises(CollapseRefused):    # alone it would pass; on top of the first it passes the bound
        tl.edit(model, Request("The Louvre", "The city of {}", "Berlin"), method="ft-l", layer=2,
                params=FTLParams(epsilon=5.0, lr=1.0), guard=guard, progress=False)
    assert len(journal(model).edits) == 1
    assert guard.base_perplexity(model) == pytest.approx(base, rel=1e-6)
    first.undo()


def test_a_sequential_stream_under_the_guard_skips_the_collapsing_edits():
    model = tiny_model("llama")
    before = _state(model)
    cases = [{"subject": s, "prompt": "The city of {}", "target": t} for s, t in
             (("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Madrid"))]
    res = tl.evaluate(model, cases, "ft-l", mode="sequential", checkpoints=[1, 3], layer=2, params=COLLAPSE,
                      guard=Guard(texts=TEXTS), progress=False)
    assert len(res.meta["refused"]) == 3 and all("collapse guard" in r for r in res.meta["refused"])
    assert _same(model, before)


def test_bad_guards_are_refused():
    with pytest.raises(ValueError, match="max_perplexity_ratio must be > 1"):
        Guard(max_perplexity_ratio=0.5)
    with pytest.raises(ValueError, match="max_weight_change"):
        Guard(max_weight_change=0)
    with pytest.raises(ValueError, match="paragraphs must be a positive int"):
        Guard(paragraphs=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        Guard(texts="one string")
    with pytest.raises(TypeError, match="guard must be True, False or a Guard"):
        as_guard("yes")
    assert as_guard(True) == Guard() and as_guard(False) is None


@pytest.mark.slow
def test_the_guard_on_the_embedded_model_refuses_a_collapsing_fine_tune(embedded_clean):
    model = embedded_clean
    fact = Request("The Eiffel Tower", "{} is located in the city of", "Rome")
    with pytest.raises(CollapseRefused, match="collapse guard refused"):
        tl.edit(model, fact, method="ft-l", layer=4, params=FTLParams(epsilon=1.0, lr=0.5), guard=True, progress=False)
    assert not journal(model).edits
    e = tl.edit(model, fact, method="ft-l", layer=4, guard=True, progress=False)   # ROME's ε 5e-4: sound
    health = e.info["health"]
    assert health["perplexity"] == pytest.approx(health["base_perplexity"], rel=0.01)
    assert 0 < max(health["weight_change"].values()) < 0.05
    e.undo()
