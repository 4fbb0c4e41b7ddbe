"""Requests, weight deltas and the journal on tiny models: bit-exact undo, ordering, save/load/replay."""

from __future__ import annotations

import pytest
import torch

from tracelab.editing import Edit, Journal, Request, WeightDelta, journal
from tracelab.editing.delta import tensor_hash
from tracelab.editing.journal import transaction
from tracelab.editing.requests import as_requests, check_conflicts
from tracelab.models.tiny import tiny_model


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.hf.state_dict().items())


def _apply(model, layer, scale=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = WeightDelta.build(model, layer, scale * torch.randn(model.d_model, model.d_mlp, generator=g))
    d.apply(model)
    e = Edit("manual", [Request("Lyon", "{} is in", "Italy")], [layer], {}, [d])
    return journal(model).record(e)


def test_request_validation():
    assert Request("Lyon", "{} is a city in", "Italy").text == "Lyon is a city in"
    with pytest.raises(ValueError, match="exactly one"):
        Request("Lyon", "Lyon is a city in", "Italy")
    with pytest.raises(ValueError, match="empty target"):
        Request("Lyon", "{} is in", "   ")
    with pytest.raises(ValueError, match="empty subject"):
        Request("", "{} is in", "Italy")
    with pytest.raises(TypeError):
        Request("Lyon", "{} is in", 3)
    assert Request.from_text("Lyon is a city in", "Lyon", "Italy").prompt == "{} is a city in"
    with pytest.raises(ValueError, match="not found"):
        Request.from_text("Paris is a city in", "Lyon", "Italy")


def test_request_shapes_and_conflicts():
    nested = {"requested_rewrite": {"prompt": "{} is in", "subject": "Lyon", "target_new": {"str": "Italy"},
                                    "target_true": {"str": "France"}}}
    flat = {"prompt": "Lyon is in", "subject": "Lyon", "target_new": "Italy", "ground_truth": "France"}
    a, b = as_requests([nested, flat])
    assert a == b and a.target_true == "France"
    with pytest.raises(ValueError, match="lacks"):
        as_requests([{"subject": "Lyon"}])
    with pytest.raises(ValueError, match="conflicting targets"):
        check_conflicts([Request("Lyon", "{} is in", "Italy"), Request("Lyon", "{} is in", "Spain")])
    assert len(check_conflicts([Request("Lyon", "{} is in", "Italy")] * 2)) == 1


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_delta_apply_revert_bit_exact(family):
    model = tiny_model(family)
    before = _state(model)
    w = model.mlp_out_weight(1)
    e = _apply(model, 1)
    # the change is in matrix orientation, whatever the storage layout (GPT-2 Conv1D is [in, out])
    assert torch.allclose(w.matrix - e.deltas[0].original.T if w.layout == "in_out" else w.matrix - e.deltas[0].original,
                          e.deltas[0].delta, atol=1e-6)
    assert e.deltas[0].hash_after == tensor_hash(w.param) != e.deltas[0].hash_before
    e.undo()
    assert _same(model, before) and len(journal(model)) == 0


def test_undo_order_and_undo_all():
    model = tiny_model("llama")
    before = _state(model)
    first, _, third = _apply(model, 1, seed=0), _apply(model, 2, seed=1), _apply(model, 1, seed=2)
    with pytest.raises(ValueError, match="later edit"):
        first.undo()  # the third edit changed the same weight: refused, nothing changed
    assert len(journal(model)) == 3
    third.undo()
    first.undo()  # now allowed
    journal(model).undo_all()
    assert _same(model, before)


def test_transaction_reverts_on_failure():
    model = tiny_model("gpt2")
    before = _state(model)
    with pytest.raises(RuntimeError):
        with transaction(model) as applied:
            d = WeightDelta.build(model, 0, torch.ones(model.d_model, model.d_mlp))
            d.apply(model)
            applied.append(d)
            raise RuntimeError("solver failed")
    assert _same(model, before)
    with pytest.raises(ValueError, match="NaN"):
        WeightDelta.build(model, 0, torch.full((model.d_model, model.d_mlp), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        WeightDelta.build(model, 0, torch.zeros(3, 3))


def test_save_load_apply_and_hash_check(tmp_path):
    model = tiny_model("gpt2")
    _apply(model, 1, seed=0)
    _apply(model, 3, seed=1)
    edited = _state(model)
    journal(model).save(tmp_path / "j")
    fresh = tiny_model("gpt2")
    Journal.load(tmp_path / "j").apply(fresh)
    assert _same(fresh, edited)  # replay is bit-exact
    with pytest.raises(ValueError, match="hash"):
        Journal.load(tmp_path / "j").apply(tiny_model("gpt2", seed=1))  # different base weights
    other = tiny_model("gpt2", seed=1)
    assert len(journal(other)) == 0  # the failed replay left nothing behind
    # an edited model saves with save_pretrained and loads back with the edit in it
    model.hf.save_pretrained(tmp_path / "hf")
    from transformers import AutoModelForCausalLM
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    key = "transformer.h.1.mlp.c_proj.weight"
    assert torch.equal(reloaded.state_dict()[key], edited[key])
