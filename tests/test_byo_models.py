"""Public calls take the user's own model objects: transformers, TransformerBridge, nnsight."""

from __future__ import annotations

import pytest
import torch

import tracelab as tl
from tracelab.models.tiny import tiny_model

PROMPT, SUBJECT = "The Eiffel Tower is in", "The Eiffel Tower"


EDIT = dict(subject=SUBJECT, prompt="{} is in", target="Rome", method="rome", layer=1,
            params=tl.editing.RomeParams(values=tl.editing.ValueParams(steps=4, bf16=False), n_templates=2))
OPTIONS = dict(kinds=("resid", "mlp"), samples=2, corruption=tl.GaussianNoise(std=0.5), progress=False)


@pytest.fixture(scope="module")
def wrapped():
    """One bridge per process: TransformerLens 4.3 fails to boot a second bridge on a tiny model
    in the same process (KeyError 'name_or_path' in its tokenizer setup)."""
    from nnsight import NNsight
    from transformer_lens.model_bridge import TransformerBridge

    model = tiny_model("gpt2")
    model.fast_trace = tl.trace(model, PROMPT, SUBJECT, **OPTIONS)  # before the bridge wraps the blocks
    model.stats = tl.editing.key_stats(model, 1, tokens=400, cache=False, progress=False)
    e = tl.edit(model, **EDIT, stats=model.stats, progress=False)
    model.native_update = e.deltas[0].delta.clone()
    e.undo()
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=model.hf, tokenizer=model.tokenizer)
    return model, {"transformers": model.hf, "bridge": bridge, "nnsight": NNsight(model.hf)}


def test_bridge_shares_the_model(wrapped):
    model, objects = wrapped
    assert tl.load_model(objects["bridge"]) is model  # same weights, same Model, same journal


def test_trace_through_any_object_equals_native(wrapped):
    """Booting a bridge wraps the HF blocks in place, so every path then runs the naive engine
    (with a warning); the results equal the native fast engine's before the bridge existed."""
    model, objects = wrapped
    native = model.fast_trace
    for name, obj in objects.items():
        with pytest.warns(UserWarning, match="naive engine"):
            result = tl.trace(obj, PROMPT, SUBJECT, **OPTIONS)
        for kind in ("resid", "mlp"):
            torch.testing.assert_close(result.scores[kind], native.scores[kind], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("wrap", ["transformers", "nnsight"])
def test_edit_through_the_users_object_changes_its_weights(wrap):
    from nnsight import NNsight

    model = tiny_model("gpt2", seed=3)
    obj = model.hf if wrap == "transformers" else NNsight(model.hf)
    weight = model.hf.transformer.h[1].mlp.c_proj.weight
    before = weight.detach().clone()
    stats = tl.editing.key_stats(model, 1, tokens=400, cache=False, progress=False)
    e = tl.edit(obj, subject=SUBJECT, prompt="{} is in", target="Rome", method="rome", layer=1,
                stats=stats, progress=False)
    assert not torch.equal(weight, before)
    e.undo()
    assert torch.equal(weight, before)


def test_edit_through_a_bridge_changes_the_bridge_weights(wrapped):
    """A booted bridge wraps the blocks in place, so the v*/z optimisation runs its reference
    engine (with a warning); the update equals the native one, the bridge computes with the
    edited weight, and undo restores it bit for bit."""
    model, objects = wrapped
    bridge = objects["bridge"]
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    tokens = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits_before = bridge(tokens)
    with pytest.warns(UserWarning, match="reference engine"):
        e = tl.edit(bridge, **EDIT, stats=model.stats, progress=False)
    torch.testing.assert_close(e.deltas[0].delta, model.native_update, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(bridge(tokens), logits_before)
    e.undo()
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(bridge(tokens), logits_before)
