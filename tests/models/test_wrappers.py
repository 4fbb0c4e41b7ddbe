"""Public calls take the user's own model objects: transformers, TransformerBridge, nnsight — at
full speed (the fast engines reach the transformers modules inside the wrappers)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tracelab as tl
from tracelab.models.tiny import tiny_model

PROMPT, SUBJECT = "The Eiffel Tower is in", "The Eiffel Tower"


EDIT = dict(subject=SUBJECT, prompt="{} is in", target="Rome", method="rome", layer=1,
            params=tl.editing.RomeParams(values=tl.editing.ValueParams(steps=4, bf16=False), n_templates=2))
OPTIONS = dict(kinds=("resid", "mlp", "attn"), samples=2, corruption=tl.GaussianNoise(std=0.5), progress=False)
PAIRS = [("I love this", "I hate this"), ("a great day", "an awful day")]


def hooks_and_forwards(hf: nn.Module) -> list:
    """Every hook and every instance-level `forward` under `hf`: what tracelab must leave as it found."""
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks), vars(m).get("forward"))
            for name, m in hf.named_modules()]


@pytest.fixture(scope="module")
def wrapped():
    """One bridge per process: TransformerLens 4.3 fails to boot a second bridge on a tiny model
    in the same process (KeyError 'name_or_path' in its tokenizer setup). Everything the tests
    compare with is computed on the plain model before the bridge wraps its blocks."""
    from nnsight import NNsight
    from transformer_lens.model_bridge import TransformerBridge

    model = tiny_model("gpt2")
    before = {"trace": {e: tl.trace(model, PROMPT, SUBJECT, engine=e, **OPTIONS) for e in ("fast", "naive")}}
    before["screen"] = tl.trace(model, PROMPT, SUBJECT, screen=6, **OPTIONS)
    # float32 forwards: the bridge switches attention to "eager", bf16 would round differently
    model.stats = tl.editing.key_stats(model, [1, 2], tokens=400, forward_dtype=None, cache=False, progress=False)
    e = tl.edit(model, **EDIT, stats=model.stats[1], progress=False)
    before["update"] = e.deltas[0].delta.clone()
    e.undo()
    before["generation"] = tl.evaluation.metrics.generate(model, [PROMPT], max_new_tokens=6)
    before["caa"] = tl.caa(model, PAIRS, layers=[1])
    model.before = before
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=model.hf, tokenizer=model.tokenizer)
    return model, {"transformers": model.hf, "bridge": bridge, "nnsight": NNsight(model.hf)}


def test_bridge_shares_the_model(wrapped):
    model, objects = wrapped
    assert tl.load_model(objects["bridge"]) is model  # same weights, same Model, same journal (its own tokenizer aside)


@pytest.mark.parametrize("engine", ["fast", "naive"])
def test_trace_through_any_object_equals_native(wrapped, engine):
    """No fallback (no warning) and the same scores as the plain model before the bridge existed."""
    model, objects = wrapped
    for name, obj in objects.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            result = tl.trace(obj, PROMPT, SUBJECT, engine=engine, **OPTIONS)
        for kind in OPTIONS["kinds"]:
            torch.testing.assert_close(result.scores[kind], model.before["trace"][engine].scores[kind],
                                       atol=1e-5, rtol=1e-5, msg=f"{name} {kind}")


def test_screen_and_attribute_through_the_bridge(wrapped):
    model, objects = wrapped
    screened = tl.trace(objects["bridge"], PROMPT, SUBJECT, screen=6, **OPTIONS)
    assert all(torch.equal(screened.exact[k], model.before["screen"].exact[k]) for k in OPTIONS["kinds"])
    for kind in OPTIONS["kinds"]:
        torch.testing.assert_close(screened.scores[kind], model.before["screen"].scores[kind], atol=1e-5, rtol=1e-5)
    estimate = tl.attribute(objects["nnsight"], PROMPT, SUBJECT, kinds="mlp", samples=2,
                            corruption=tl.GaussianNoise(std=0.5))
    assert estimate.scores["mlp"].shape == (2, model.n_layers, len(model.tokens(PROMPT)))


def test_generation_through_a_bridge_is_the_models(wrapped):
    """TransformerLens 4.3's attention ignores transformers 5.24's `cache=` argument, so a booted
    bridge generates garbage after the first token; tracelab's calls run the modules it wraps."""
    model, _ = wrapped
    assert tl.evaluation.metrics.generate(model, [PROMPT], max_new_tokens=6) == model.before["generation"]


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


def test_edit_through_a_bridge_runs_the_fast_engine(wrapped):
    """The fast v*/z engine (no warning), the update of the plain model to 1e-5 (fp32 values),
    the bridge computes with the edited weight, and undo restores it bit for bit."""
    model, objects = wrapped
    bridge = objects["bridge"]
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    tokens = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits_before = bridge(tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        e = tl.edit(bridge, **EDIT, stats=model.stats[1], progress=False)
    torch.testing.assert_close(e.deltas[0].delta, model.before["update"], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(bridge(tokens), logits_before)
    e.undo()
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(bridge(tokens), logits_before)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_mass_editors_through_a_bridge(wrapped, method):
    model, objects = wrapped
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    e = tl.edit(objects["bridge"], subject=SUBJECT, prompt="{} is in", target="Rome", method=method, layers=[1, 2],
                stats=model.stats, params=getattr(tl.editing, f"{'Memit' if method == 'memit' else 'AlphaEdit'}Params")(
                    values=tl.editing.ValueParams(steps=4, bf16=False)), progress=False)
    assert e.deltas
    e.undo()
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ["grace", "t-patcher"])
def test_memory_editors_through_the_wrappers_patch_the_users_forward(wrapped, method):
    """A hook change made through a bridge or an nnsight object is in the user's own forward pass
    (the bridge's and nnsight's), and gone after undo."""
    model, objects = wrapped
    tokens = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    params = (tl.editing.GraceParams(init="warm") if method == "grace" else tl.editing.TPatcherParams(steps=30))
    for name in ("bridge", "nnsight"):
        with torch.no_grad():
            before = objects["bridge"](tokens)
        e = tl.edit(objects[name], subject=SUBJECT, prompt="{} is in", target="Rome", method=method, layer=1,
                    params=params, progress=False)
        assert e.changes and e.changes[0].kind == "hook"
        with torch.no_grad():
            patched = model.hf(tokens).logits
            assert not torch.equal(patched, before)
            torch.testing.assert_close(objects["bridge"](tokens), patched, atol=1e-5, rtol=1e-5)
            with objects["nnsight"].trace(tokens):
                out = objects["nnsight"].output.save()
            torch.testing.assert_close(out.logits, patched, atol=1e-5, rtol=1e-5)
        e.undo()
        with torch.no_grad():
            assert torch.equal(objects["bridge"](tokens), before)


def test_stats_steering_and_evaluation_through_the_wrappers(wrapped):
    model, objects = wrapped
    for name in ("bridge", "nnsight"):
        s = tl.editing.key_stats(objects[name], 1, tokens=400, forward_dtype=None, cache=False, progress=False)
        torch.testing.assert_close(s.moment, model.stats[1].moment, atol=1e-5, rtol=1e-4, msg=name)
        v = tl.caa(objects[name], PAIRS, layers=[1])
        torch.testing.assert_close(v.directions[1], model.before["caa"].directions[1], atol=1e-5, rtol=1e-4, msg=name)
    plain = model.next_token_logits(PROMPT)
    with tl.steer(objects["bridge"], model.before["caa"], alpha=2.0):
        steered = model.next_token_logits(PROMPT)
    assert not torch.allclose(plain, steered) and torch.equal(model.next_token_logits(PROMPT), plain)
    records = [{"subject": SUBJECT, "prompt": "{} is in", "target_new": "Rome", "ground_truth": "Paris"}]
    result = tl.evaluate(objects["bridge"], records, "rome", layer=1, stats=model.stats[1], progress=False,
                         params=EDIT["params"])
    assert result.rows[0]["post"]["prob_new"] > result.rows[0]["pre"]["prob_new"]


def test_tracelab_leaves_no_hook_and_no_forward_behind(wrapped):
    model, objects = wrapped
    state = hooks_and_forwards(model.hf)
    tl.trace(objects["nnsight"], PROMPT, SUBJECT, engine="nnsight", **OPTIONS)
    tl.trace(objects["bridge"], PROMPT, SUBJECT, **OPTIONS)
    e = tl.edit(objects["bridge"], **EDIT, stats=model.stats[1], progress=False)
    e.undo()
    assert hooks_and_forwards(model.hf) == state


class _StarArgsBlock(nn.Module):
    """A wrapper whose forward names nothing: the walk cannot replay its calls."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        return self.block(*args, **kwargs)


def test_a_layer_that_cannot_be_walked_falls_back_with_a_warning_naming_it():
    model = tiny_model("gpt2", seed=4)
    native = tl.trace(model, PROMPT, SUBJECT, **OPTIONS)
    blocks = model.hf.transformer.h
    for i in range(len(blocks)):
        blocks[i] = _StarArgsBlock(blocks[i])
    model.arch = type(model.arch)(**{**vars(model.arch), "attn": "block.attn", "mlp": "block.mlp",
                                     "mlp_out_proj": "block.mlp.c_proj"})
    with pytest.warns(UserWarning, match=r"_StarArgsBlock.*naive engine.*FLOPs"):
        result = tl.trace(model, PROMPT, SUBJECT, **OPTIONS)
    for kind in OPTIONS["kinds"]:
        torch.testing.assert_close(result.scores[kind], native.scores[kind], atol=1e-5, rtol=1e-5)


def test_a_wrapper_of_an_unsupported_model_names_itself_and_the_families():
    from nnsight import NNsight
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=16))
    with pytest.raises(ValueError, match=r"NNsight wraps a BertForMaskedLM.*'bert'.*gpt2.*llama"):
        tl.load_model(NNsight(bert), tokenizer=tiny_model("gpt2").tokenizer)


def test_evaluating_an_edit_on_another_copy_is_refused(wrapped):
    model, _ = wrapped
    other = tiny_model("gpt2")
    e = tl.edit(other, **EDIT, stats=tl.editing.key_stats(other, 1, tokens=400, cache=False, progress=False),
                progress=False)
    try:
        with pytest.raises(ValueError, match="applied to another model object"):
            tl.evaluate(model, e, progress=False)
    finally:
        e.undo()
