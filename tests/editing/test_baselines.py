"""The baselines on tiny models: FT-L / FT-M, LoRA (peft), knowledge neurons, IKE, edit arithmetic."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab as tl
from tracelab.editing import (EditDelta, FTLParams, FTMParams, HookPatch, IKEParams, KNParams, LoRAParams, Request,
                              journal)
from tracelab.editing.methods.ike import demonstrations
from tracelab.editing.methods.lora import adapted_weights, lora_factors
from tracelab.models.tiny import tiny_model
from tracelab.tracing.neurons import integrated_gradients, knowledge_neurons

REQ = Request("The Eiffel Tower", "The city of {}", "Rome")


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.hf.state_dict().items())


def _logits(model, texts=("The city of The Eiffel Tower", "The Louvre is in the city of")):
    return model.next_token_logits(list(texts))


# ---- FT-L / FT-M ---------------------------------------------------------------------------
def test_ft_l_keeps_every_weight_change_inside_its_linf_ball():
    model = tiny_model("llama")
    e = tl.edit(model, REQ, method="ft-l", layer=2, params=FTLParams(epsilon=1e-3, lr=1e-2), progress=False)
    (d,) = e.deltas
    assert d.name == model.mlp_out_weight(2).name and d.layer == 2
    assert d.delta.abs().max() <= 1e-3 + 1e-9 and d.delta.abs().max() > 0.9e-3  # pushed to the wall
    assert e.info["parameters_changed"] == model.d_model * model.d_mlp and len(e.info["loss"]) == 25
    e.undo()


def test_ft_m_trains_every_mlp_matrix_and_lowers_the_target_loss():
    model = tiny_model("llama")
    before = model.target_log_prob(REQ.text, REQ.target)
    e = tl.edit(model, REQ, method="ft-m", layers=[1, 2], params=FTMParams(matrices="mlp", lr=1e-2), progress=False)
    assert len(e.deltas) == 6 and {d.layer for d in e.deltas} == {1, 2}  # gate, up, down × 2 layers
    assert model.target_log_prob(REQ.text, REQ.target) > before + 1.0
    assert e.info["loss"][-1] < e.info["loss"][0]
    e.undo()


def test_ft_bad_params_are_refused_when_made():
    with pytest.raises(ValueError, match="L∞ radius"):
        FTLParams(epsilon=0.0)
    with pytest.raises(ValueError, match="L∞ radius"):
        FTMParams(epsilon=-1.0)
    with pytest.raises(ValueError, match="matrices must be"):
        FTLParams(matrices="attention")


# ---- LoRA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family, modules", [("llama", ("q_proj", "v_proj")), ("gpt2", ("c_attn", "c_proj"))])
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_lora_factors_are_what_peft_merges(family, modules):
    """ΔW = A Bᵀ (our factors) equals the weight change of peft's own merge, for nn.Linear and GPT-2's Conv1D."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model(family)
    before = _state(model)
    hp = LoRAParams(target_modules=modules, steps=5, layers=(1,))
    names = adapted_weights(model, hp)
    factors, _ = lora_factors(model, [REQ], names, hp)
    assert _same(model, before) and not any("lora" in n for n, _ in model.hf.named_modules())
    assert all(p.requires_grad for p in model.hf.parameters())
    # the same training, merged by peft into a copy
    copy = tiny_model(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp.seed)
        config = LoraConfig(r=hp.r, lora_alpha=hp.alpha, lora_dropout=hp.dropout, bias="none",
                            target_modules=sorted({n.removesuffix(".weight") for n in names}),
                            fan_in_fan_out=family == "gpt2")
        peft_model = get_peft_model(copy.hf, config)
        trained = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        opt = torch.optim.Adam(trained, lr=hp.lr)
        peft_model.train()
        from tracelab.editing.methods.ft import edit_loss
        from tracelab.editing.toolkit.answers import target_batch
        ids, mask, spans = target_batch(copy, [REQ])
        for _ in range(hp.steps):
            opt.zero_grad()
            edit_loss(copy, ids, mask, spans, "target_new").backward()
            opt.step()
        merged = peft_model.merge_and_unload()
    for name in names:
        A, B = factors[name]
        assert A.shape[1] == B.shape[1] == hp.r
        change = merged.get_parameter(name).detach() - before[name]
        torch.testing.assert_close(A @ B.T, change, atol=2e-6, rtol=1e-4)


def test_lora_edit_is_factored_undoable_and_replayable(tmp_path):
    model = tiny_model("llama")
    before, logits = _state(model), _logits(model)
    e = tl.edit(model, REQ, method="lora", params=LoRAParams(steps=20), progress=False)
    assert e.deltas and all(d.factors is not None for d in e.deltas)
    assert e.info["parameters_changed"] == sum(a.numel() + b.numel() for a, b in (d.factors for d in e.deltas))
    edited = _logits(model)
    journal(model).save(tmp_path / "j")
    e.undo()
    assert _same(model, before) and torch.equal(_logits(model), logits)
    tl.Journal.load(tmp_path / "j").apply(model)
    assert torch.equal(_logits(model), edited)


def test_lora_unknown_target_module_lists_the_linear_modules():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"\['query'\] do not exist.*'down_proj'.*'q_proj'"):
        tl.edit(model, REQ, method="lora", params=LoRAParams(target_modules=("query",)), progress=False)
    assert len(journal(model)) == 0


# ---- knowledge neurons ---------------------------------------------------------------------
def _brute_force_ig(model, prompt, target_id, layer, steps):
    """Integrated gradients with one full forward per step (the definition)."""
    ids = model.tokenize(prompt)["input_ids"]
    with torch.no_grad(), model.record([model.mlp_key(layer)]) as clean:
        model.hf(input_ids=ids)
    w = clean[model.mlp_key(layer).name][0, -1]
    total = torch.zeros_like(w)
    for k in range(1, steps + 1):
        scaled = (k / steps * w).clone().requires_grad_(True)

        def fn(x):
            x = x.clone()
            x[0, -1] = scaled
            return x
        with torch.enable_grad(), model.patch({model.mlp_key(layer): fn}):
            p = model.hf(input_ids=ids).logits[0, -1].softmax(-1)[target_id]
            (g,) = torch.autograd.grad(p, scaled)
        total += g
    return w * total / steps, w


def test_integrated_gradients_match_the_definition_and_are_complete():
    model = tiny_model("llama")
    prompt = "The city of The Eiffel Tower"
    target = int(model.next_token_logits(prompt)[0].argmax())
    fast = integrated_gradients(model, prompt, target, [1, 3], steps=50)
    for i, layer in enumerate([1, 3]):
        reference, w = _brute_force_ig(model, prompt, target, layer, steps=50)
        torch.testing.assert_close(fast[i], reference, atol=1e-6, rtol=1e-4)
        # completeness (IG's axiom): Σ Attr ≈ P(w) − P(0)
        with torch.no_grad(), model.patch({model.mlp_key(layer): lambda x: torch.cat([x[:, :-1], 0 * x[:, -1:]], 1)}):
            p0 = float(model.hf(**model.tokenize(prompt)).logits[0, -1].softmax(-1)[target])
        p1 = float(model.next_token_logits(prompt)[0].softmax(-1)[target])
        assert abs(float(fast[i].sum()) - (p1 - p0)) < 0.05 * abs(p1 - p0) + 1e-6


def test_knowledge_neurons_selection_figure_and_round_trip(tmp_path):
    model = tiny_model("llama")
    prompts = ["The city of The Eiffel Tower", "I went to the city of The Eiffel Tower"]
    kn = knowledge_neurons(model, prompts, int(model.next_token_logits(prompts[0])[0].argmax()), steps=10,
                           progress=False)
    assert kn.scores.shape == (2, model.n_layers, model.d_mlp)
    for layer, neuron in kn.neurons:  # above 0.2 · max in both prompts
        assert all(kn.scores[p, layer, neuron] > 0.2 * kn.scores[p].max() for p in range(2))
    assert kn.figure().data and kn.figure(trace=tl.trace(model, prompts[0], "The Eiffel Tower", kinds="mlp",
                                                         samples=1, progress=False)).data
    back = type(kn).load(kn.save(tmp_path / "kn"))
    assert torch.equal(back.scores, kn.scores) and back.neurons == kn.neurons


def test_kn_edit_writes_the_paper_rule_into_the_value_vectors():
    model = tiny_model("llama")
    old = int(model.next_token_logits(REQ.text)[0].argmax())
    e = tl.edit(model, REQ, method="kn", params=KNParams(steps=10, prompts=2), progress=False)
    E = model.hf.get_output_embeddings().weight.detach()
    new = model.target_ids(REQ.text, REQ.target)[0]
    for d in e.deltas:  # nn.Linear: [d_model, d_mlp]; one column per knowledge neuron of the layer
        neurons = [i for l, i in e.info["neurons"] if l == d.layer]
        for i in neurons:
            torch.testing.assert_close(d.delta[:, i], -E[old] + 8 * E[new], atol=1e-5, rtol=1e-5)
        others = [i for i in range(model.d_mlp) if i not in neurons]
        assert d.delta[:, others].abs().max() == 0
    e.undo()
    erase = tl.edit(model, REQ, method="kn", params=KNParams(steps=10, prompts=2, mode="erase"), progress=False)
    for layer, neuron in erase.info["neurons"]:
        assert model.mlp_out_weight(layer).matrix[:, neuron].abs().max() == 0
    erase.undo()


def test_kn_refuses_a_target_the_model_already_gives():
    model = tiny_model("llama")
    answer = model.tokenizer.decode([int(model.next_token_logits(REQ.text)[0].argmax())])
    before = _state(model)
    with pytest.raises(ValueError, match="already answers"):
        tl.edit(model, Request(REQ.subject, REQ.prompt, answer), method="kn", progress=False)
    assert _same(model, before)


# ---- IKE -----------------------------------------------------------------------------------
def _pool(tmp_path, extra=()):
    records = [{"subject": s, "prompt": f"{s} is located in", "target_new": t, "ground_truth": "x",
                "rephrase_prompt": f"Where is {s}? In", "locality_prompt": "The Louvre is in",
                "locality_ground_truth": "Paris"}
               for s, t in [("Big Ben", "Berlin"), ("The Colosseum", "Madrid"), ("Mount Fuji", "Seattle")]]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records + list(extra)))
    return path


def test_ike_context_holds_the_fact_and_the_closest_demonstrations(tmp_path):
    model = tiny_model("llama")
    pool = _pool(tmp_path)
    # the tiny model's context is 128 positions: two demonstrations fit
    e = tl.edit(model, REQ, method="ike", params=IKEParams(k=2, pool=str(pool), margin_tokens=4), progress=False)
    (context,) = e.changes
    assert context.prefix.endswith(f"New Fact: {REQ.text} Rome\nPrompt: ") and context.prefix.count("New Fact:") == 3
    assert model.query_text("Q") == [context.prefix + "Q"] and e.info["parameters_changed"] == 0
    e.undo()
    assert model.query_text("Q") == ["Q"]
    # fewer demonstrations when the context would not fit
    short = demonstrations(model, REQ, IKEParams(k=6, pool=str(pool), margin_tokens=64))
    assert 0 < short.count("New Fact:") < 6


def test_ike_refuses_a_pool_that_holds_the_edited_record(tmp_path):
    model = tiny_model("llama")
    pool = _pool(tmp_path, [{"subject": REQ.subject, "prompt": REQ.text, "target_new": "Rome", "ground_truth": "x",
                             "rephrase_prompt": "r", "locality_prompt": "l", "locality_ground_truth": "m"}])
    with pytest.raises(ValueError, match="contains the record being edited"):
        tl.edit(model, REQ, method="ike", params=IKEParams(pool=str(pool)), progress=False)
    assert len(journal(model)) == 0 and model.query_text("Q") == ["Q"]


# ---- edit arithmetic -----------------------------------------------------------------------
def _two_edits(model):
    kw = dict(method="ft-m", params=FTMParams(lr=1e-2), progress=False)
    a = tl.edit(model, REQ, layer=1, **kw)
    b = tl.edit(model, Request("Big Ben", "The city of {}", "Berlin"), layer=2, **kw)
    return a, b


def test_sum_of_two_disjoint_edits_is_both_applied_and_goes_onto_a_copy():
    model = tiny_model("llama")
    a, b = _two_edits(model)
    both = _logits(model)
    v = journal(model).as_delta()
    assert set(v.deltas) == {a.deltas[0].name, b.deltas[0].name}
    journal(model).undo_all()
    copy = tiny_model("llama")
    parts = EditDelta({a.deltas[0].name: a.deltas[0].delta}, {a.deltas[0].name: a.deltas[0].hash_before}) + \
        EditDelta({b.deltas[0].name: b.deltas[0].delta}, {b.deltas[0].name: b.deltas[0].hash_before})
    parts.apply(copy)
    torch.testing.assert_close(_logits(copy), both, atol=1e-5, rtol=1e-5)
    other = tiny_model("llama")
    v.apply(other)
    assert torch.equal(_logits(other), both)  # the same deltas on the same base: the same weights


def test_negation_undoes_up_to_rounding_and_bases_are_checked():
    model = tiny_model("llama")
    base = _logits(model)
    _two_edits(model)
    v = journal(model).as_delta()
    (-v).apply(model)
    torch.testing.assert_close(_logits(model), base, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="hash"):
        v.apply(tiny_model("llama", seed=3))  # another base model: refused
    w = EditDelta({n: d for n, d in v.deltas.items()}, {n: "0" * 16 for n in v.deltas})
    with pytest.raises(ValueError, match="different weights"):
        v + w
    assert torch.allclose((2 * v).deltas[next(iter(v.deltas))], 2 * v.deltas[next(iter(v.deltas))])


def test_as_delta_refuses_changes_that_are_not_weights():
    from tracelab.editing import Edit, PatchModule

    class Zero(PatchModule):
        def forward(self, x):
            return x

    model = tiny_model("llama")
    patch = HookPatch("blocks.1.mlp_out", Zero())
    patch.apply(model)
    journal(model).record(Edit("manual", [], [1], {}, [patch]))
    with pytest.raises(ValueError, match="not weights"):
        journal(model).as_delta()
    journal(model).undo_all()
