"""The model layer: sites, hooks, weight layout and bad inputs, on every architecture family."""

from __future__ import annotations

import pytest
import torch

from tracelab.models import architecture_for, hooks, supported_model_types
from tracelab.models.tiny import TINY_FAMILIES, tiny_model

PROMPTS = ["The Eiffel Tower is in Paris", "Mount Fuji is in"]


def _module(model, site):
    return model.hf.get_submodule(site.module)


def test_every_required_family_is_registered():
    for model_type in TINY_FAMILIES:
        assert architecture_for(model_type).model_types
    assert {"gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
            "gemma3_text", "phi3", "opt"} <= set(supported_model_types())


def test_unknown_architecture_lists_supported():
    with pytest.raises(ValueError, match="unsupported architecture 'bert'.*gpt2.*llama"):
        architecture_for("bert")


def test_sites_record_shapes(tiny):
    batch = tiny.tokenize(PROMPTS)
    b, t = batch["input_ids"].shape
    sites = [tiny.embed, tiny.resid(0), tiny.attn_out(1), tiny.mlp_out(2), tiny.mlp_key(3)]
    with tiny.record(sites) as cache:
        tiny.hf(**batch)
    assert cache["embed"].shape == (b, t, tiny.d_model)
    assert cache["blocks.0.resid"].shape == (b, t, tiny.d_model)
    assert cache["blocks.1.attn_out"].shape == (b, t, tiny.d_model)
    assert cache["blocks.2.mlp_out"].shape == (b, t, tiny.d_model)
    assert cache["blocks.3.mlp_key"].shape == (b, t, tiny.d_mlp)


def test_mlp_key_times_out_weight_is_mlp_out(tiny):
    batch = tiny.tokenize(PROMPTS)
    for layer in (0, tiny.n_layers - 1):
        with tiny.record([tiny.mlp_key(layer), tiny.mlp_out(layer)]) as cache:
            tiny.hf(**batch)
        weight = tiny.mlp_out_weight(layer)
        assert weight.matrix.shape == (tiny.d_model, tiny.d_mlp)
        rebuilt = cache[f"blocks.{layer}.mlp_key"] @ weight.matrix.T
        if weight.bias is not None:
            rebuilt = rebuilt + weight.bias.detach()
        torch.testing.assert_close(rebuilt, cache[f"blocks.{layer}.mlp_out"], atol=1e-5, rtol=1e-5)


def test_weight_layout_is_explicit():
    gpt2 = tiny_model("gpt2")
    assert gpt2.mlp_out_weight(0).layout == "in_out"  # Conv1D stores [in, out]
    assert tiny_model("llama").mlp_out_weight(0).layout == "out_in"
    weight = gpt2.mlp_out_weight(1)
    before = weight.param.detach().clone()
    weight.matrix[0, 1] += 1.0  # the [out, in] view writes through to the [in, out] storage
    assert weight.param[1, 0] == before[1, 0] + 1.0


@pytest.mark.parametrize("kind", ["resid", "attn_out", "mlp_out", "mlp_key"])
def test_patch_equals_hand_written_hook(tiny, kind):
    """A patched site changes the logits exactly as a hand-written hook on the same module."""
    site = getattr(tiny, kind)(1)
    batch = tiny.tokenize(PROMPTS)
    width = tiny.d_mlp if kind == "mlp_key" else tiny.d_model
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(2, width, generator=generator)
    positions = [1, 3]

    def rewrite(x):  # [batch, pos, width] -> same
        x = x.clone()
        x[0, positions] = values
        return x

    with tiny.patch({site: hooks.replace(values, positions=positions, rows=[0])}):
        patched = tiny.hf(**batch).logits

    module = _module(tiny, site)
    if site.io == "input":
        def pre_hook(mod, args):
            x = args[0]
            flat = x.dim() == 2  # OPT runs its MLP on [batch*pos, d]
            y = rewrite(x.view(*batch["input_ids"].shape, -1) if flat else x)
            return (y.reshape(x.shape), *args[1:])
        handle = module.register_forward_pre_hook(pre_hook)
    else:
        def hook(mod, args, output):
            x = output[0] if isinstance(output, tuple) else output
            flat = x.dim() == 2
            y = rewrite(x.view(*batch["input_ids"].shape, -1) if flat else x).reshape(x.shape)
            return (y, *output[1:]) if isinstance(output, tuple) else y
        handle = module.register_forward_hook(hook)
    try:
        expected = tiny.hf(**batch).logits
    finally:
        handle.remove()
    clean = tiny.hf(**batch).logits
    assert not torch.equal(patched, clean)
    torch.testing.assert_close(patched, expected, atol=0, rtol=0)


def test_hooks_removed_on_error():
    model = tiny_model("llama")
    batch = model.tokenize(PROMPTS)
    clean = model.hf(**batch).logits

    def boom(x):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        with model.patch({model.resid(1): boom}):
            model.hf(**batch)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.hf.modules())
    torch.testing.assert_close(model.hf(**batch).logits, clean, atol=0, rtol=0)


def test_add_patch_on_rows_and_positions():
    model = tiny_model("qwen2")
    batch = model.tokenize(PROMPTS)
    vector = torch.ones(model.d_model)
    with model.record([model.resid(0)]) as clean:
        model.hf(**batch)
    # Hooks on one site run in the order their contexts were entered: patch first, then record.
    with model.patch({model.resid(0): hooks.add(vector, rows=[1], positions=[0])}), model.record([model.resid(0)]) as cache:
        model.hf(**batch)
    diff = cache["blocks.0.resid"] - clean["blocks.0.resid"]
    assert torch.allclose(diff[1, 0], vector)
    diff[1, 0] = 0
    assert diff.abs().max() == 0


def test_record_stop_runs_only_up_to_the_site():
    model = tiny_model("gpt2", n_layers=4)
    calls = []
    handle = model.layer(3).register_forward_hook(lambda *a: calls.append(1))
    try:
        with model.record([model.mlp_key(1)], stop=True) as cache:
            model.hf(**model.tokenize(PROMPTS))
    finally:
        handle.remove()
    assert "blocks.1.mlp_key" in cache and not calls


def test_site_names_round_trip():
    model = tiny_model("llama")
    for site in [model.embed, model.resid(2), model.attn_out(0), model.mlp_out(3), model.mlp_key(1)]:
        assert model.site(site.name) == site
    assert model.resid(-1).name == f"blocks.{model.n_layers - 1}.resid"


@pytest.mark.parametrize("bad", ["blocks.x.resid", "blocks.1.nope", "resid", "layers.1.resid"])
def test_bad_site_names(bad):
    with pytest.raises(ValueError, match="unknown site"):
        tiny_model("llama").site(bad)


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range(layer):
    model = tiny_model("llama", n_layers=4)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        model.resid(layer)


def test_layer_must_be_int():
    with pytest.raises(TypeError, match="layer must be an int"):
        tiny_model("llama").mlp_out(1.0)


def test_predict_and_log_prob_agree():
    model = tiny_model("llama")
    (token, prob), = model.predict("The Eiffel Tower is in", k=1)
    logp = model.target_log_prob("The Eiffel Tower is in", token)
    ids = model.target_ids("The Eiffel Tower is in", token)
    if len(ids) == 1:
        assert abs(logp - torch.tensor(prob).log().item()) < 1e-4
    with pytest.raises(ValueError, match="k must be"):
        model.predict("x", k=0)


def test_tokenize_rejects_empty():
    model = tiny_model("llama")
    for bad in ["", [], [""]]:
        with pytest.raises(ValueError, match="non-empty"):
            model.tokenize(bad)
