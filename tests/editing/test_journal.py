"""Requests, Changes and the journal on tiny models: bit-exact undo, ordering, save/load/replay, integrity."""

from __future__ import annotations

import pytest
import torch

from tracelab.editing import (Edit, HookPatch, Journal, ParamDelta, PatchModule, PromptContext, Request, journal,
                              register_patch)
from tracelab.editing.transaction import transaction
from tracelab.io import tensor_hash
from tracelab.editing.requests import as_requests, check_conflicts
from tracelab.models.tiny import tiny_model


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.hf.state_dict().items())


def _apply(model, layer, scale=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = ParamDelta.mlp_out(model, layer, scale * torch.randn(model.d_model, model.d_mlp, generator=g))
    with transaction(model) as tx:
        tx.apply(d)
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
    # the delta is in the parameter's own layout (GPT-2 Conv1D is [in, out])
    assert torch.allclose(w.param - e.deltas[0].original, e.deltas[0].delta, atol=1e-6)
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
        with transaction(model) as tx:
            tx.apply(ParamDelta.mlp_out(model, 0, torch.ones(model.d_model, model.d_mlp)))
            raise RuntimeError("solver failed")
    assert _same(model, before)
    with pytest.raises(ValueError, match="non-finite"):  # finite delta, overflowing weight: reverted
        with transaction(model) as tx:
            tx.apply(ParamDelta.mlp_out(model, 0, torch.full((model.d_model, model.d_mlp), 3e38)))
            tx.apply(ParamDelta.mlp_out(model, 0, torch.full((model.d_model, model.d_mlp), 3e38)))
    assert _same(model, before)
    with pytest.raises(ValueError, match="NaN"):
        ParamDelta.mlp_out(model, 0, torch.full((model.d_model, model.d_mlp), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        ParamDelta.mlp_out(model, 0, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no parameter"):
        ParamDelta.build(model, "transformer.h.0.nothing.weight", torch.zeros(3, 3))


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


def test_factored_delta_is_kept_as_factors_and_equals_its_product(tmp_path):
    model = tiny_model("llama")
    before = _state(model)
    name = model.mlp_out_weight(1).name
    rows, cols = model.parameter(name).shape
    A, B = torch.randn(rows, 2) * 1e-2, torch.randn(cols, 2) * 1e-2
    d = ParamDelta.build(model, name, factors=(A, B))
    assert set(d.tensors()) == {"A", "B"} and torch.allclose(d.delta, A @ B.T)
    with transaction(model) as tx:
        tx.apply(d)
    e = journal(model).record(Edit("manual", [], [1], {}, [d]))
    edited = _state(model)
    journal(model).save(tmp_path / "j")
    e.undo()
    assert _same(model, before)
    replayed = Journal.load(tmp_path / "j")
    assert replayed.edits[0].changes[0].factors is not None
    replayed.apply(model)
    assert _same(model, edited)
    with pytest.raises(ValueError, match=r"factors .* shapes"):
        ParamDelta.build(model, name, factors=(A, torch.randn(cols + 1, 2)))


@register_patch
class AddVector(PatchModule):
    """A test patch: adds a learned vector to the site."""

    def __init__(self, width: int):
        super().__init__()
        self.vector = torch.nn.Parameter(torch.randn(width))

    def forward(self, x):
        return x + self.vector

    def config(self):
        return {"width": self.vector.numel()}


def _logits(model, text="The Eiffel Tower is in"):
    with torch.no_grad():
        return model.hf(**model.tokenize(text)).logits


def test_hook_patch_and_prompt_context_apply_revert_suspend_save_load(tmp_path):
    model = tiny_model("gpt2")
    before, base = _state(model), _logits(model)
    patch = HookPatch("blocks.1.mlp_out", AddVector(model.d_model))
    context = PromptContext("Lyon is in Italy. ")
    with transaction(model) as tx:
        tx.apply(patch)
        tx.apply(context)
    e = journal(model).record(Edit("manual", [], [1], {}, [patch, context]))
    patched = _logits(model)
    assert not torch.allclose(patched, base) and _same(model, before)  # no weight touched
    assert model.query_text("Lyon is in") == ["Lyon is in Italy. Lyon is in"]
    with journal(model).suspended():  # every kind taken out
        assert torch.equal(_logits(model), base) and model.query_text("x") == ["x"]
    assert torch.equal(_logits(model), patched) and model.query_text("x") == ["Lyon is in Italy. x"]
    journal(model).save(tmp_path / "j")
    e.undo()
    assert torch.equal(_logits(model), base) and model.query_text("x") == ["x"]
    Journal.load(tmp_path / "j").apply(model)
    assert torch.equal(_logits(model), patched) and model.query_text("x") == ["Lyon is in Italy. x"]
    journal(model).undo_all()
    assert torch.equal(_logits(model), base)


def _tamper(path, key, fn):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors[key] = fn(tensors[key])
    save_file(tensors, path)


def test_saved_journal_integrity(tmp_path):
    import json

    model = tiny_model("gpt2")
    _apply(model, 1)
    journal(model).save(tmp_path / "j")
    before = _state(fresh := tiny_model("gpt2"))
    # a delta changed after saving (each value doubled): refused, nothing applied
    _tamper(tmp_path / "j" / "edit-000.safetensors", "change.0.delta", lambda t: 2 * t)
    with pytest.raises(ValueError, match="modified after saving"):
        Journal.load(tmp_path / "j").apply(fresh)
    assert _same(fresh, before) and len(journal(fresh)) == 0
    # a truncated file: named, not a raw SafetensorError
    (tmp_path / "j" / "edit-000.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="edit-000.safetensors cannot be read"):
        Journal.load(tmp_path / "j")
    # a newer format: a clear error, not a KeyError
    journal(model).save(tmp_path / "k")
    meta = json.loads((tmp_path / "k" / "journal.json").read_text())
    (tmp_path / "k" / "journal.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="newer tracelab"):
        Journal.load(tmp_path / "k")
    # a change that does not fit the model: another family's parameter name
    journal(model).save(tmp_path / "m")
    with pytest.raises(ValueError, match="does not have"):
        Journal.load(tmp_path / "m").apply(tiny_model("llama"))
