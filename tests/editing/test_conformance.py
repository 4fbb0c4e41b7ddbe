"""Every registered method, held to the same contract on a tiny model (new methods pass by registering):
reaches its target, undo is bit-exact, a failing method changes nothing, save → load → apply gives
the same logits, bad inputs are rejected before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch

import tracelab as tl
from tracelab.editing import (HookPatch, Journal, Method, ParamDelta, PatchModule, Request, journal, key_stats,
                              register, register_patch, registry)
from tracelab.editing.toolkit.values import says_target
from tracelab.models.tiny import tiny_model

# The subject ends the prompt: in a tiny random model, attention carries almost nothing from an
# earlier position to the last one, so only an edit at the last token can reach the output.
REQ = Request("The Eiffel Tower", "The city of {}", "Rome")
LAYER = 2
# The papers' defaults are tuned for billion-parameter models; on a tiny random model MEMIT's z
# clamp (0.75 × |h|) and λ = 3000 hold the edit back, and FT-L's ε = 5e-4 (its point: a small
# change) cannot move a random model's answer. A method not listed here runs its defaults.
TINY_PARAMS = {"memit": lambda: tl.editing.MemitParams(values=tl.editing.ValueParams(clamp_norm=4.0), mom2_weight=100.0),
               "alphaedit": lambda: tl.editing.AlphaEditParams(values=tl.editing.ValueParams(clamp_norm=4.0)),
               "ft-l": lambda: tl.editing.FTLParams(epsilon=0.5, lr=1e-2),
               "ft-m": lambda: tl.editing.FTMParams(lr=1e-2),
               "mend": lambda: tl.editing.MendParams(rank=8, norm_edits=4, edit_lr=1e-2),
               "ke": lambda: tl.editing.KEParams(max_scale=100.0, lstm_dim=16, condition_dim=32, hidden_dim=16),
               "serac": lambda: tl.editing.SeracParams(rank=2, scope_dim=16, scope_steps=50)}
# In-context methods cannot reach a target on a random model (it does not follow a context), nor can
# SERAC, whose counterfactual model answers from one; for them the contract is that the prompt is
# asked differently while applied, and exactly as before after.
IN_CONTEXT = {n for n in registry.names() if registry.get(n).family == "in-context"} | {"serac"}


@register_patch
class AddToResidual(PatchModule):
    """Adds a fixed vector to every position of the site."""

    def __init__(self, width: int):
        super().__init__()
        self.vector = torch.nn.Parameter(torch.zeros(width), requires_grad=False)

    def forward(self, x):
        return x + self.vector

    def config(self):
        return {"width": self.vector.numel()}


@dataclass
class PushParams:
    scale: float = 50.0

    def to_dict(self):
        return asdict(self)


@register
class PushTowardsTarget(Method):
    """A method a user registers from a notebook: a hook at the layer's output that pushes the
    residual towards the target's unembedding (crude, but it reaches the target)."""

    name, family, Params, layers = "test-push", "memory", PushParams, "one"

    def apply(self, model, requests, layers, params, ctx):
        (request,), (layer,) = requests, layers
        first = model.target_ids(request.text, request.target)[0]
        direction = model.hf.get_output_embeddings().weight[first].detach()
        module = AddToResidual(model.d_model)
        module.vector.data = params.scale * direction / direction.norm()
        return [HookPatch(f"blocks.{layer}.resid", module)]


@pytest.fixture(autouse=True, scope="module")
def editor_cache(tmp_path_factory):
    """Trained methods' checkpoints for the tiny model, trained once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRACELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _setup(name):
    model = tiny_model("llama")
    method = registry.get(name)
    stats = key_stats(model, list(range(model.n_layers)), tokens=2000, max_len=64, cache=False, progress=False) \
        if "stats" in method.needs else None
    layers = {"layer": LAYER} if method.layers == "one" else {"layers": [1, LAYER]} if method.layers == "range" else {}
    params = TINY_PARAMS[name]() if name in TINY_PARAMS else None
    if method.trained:  # a few steps of training (returned from the cache after the first call)
        from tracelab.data import shared_data
        from tracelab.training import train_editor

        trained_layers = layers.get("layers", [LAYER] if method.layers == "one" else [])
        train_editor(name, model, shared_data("zsre-sample.json"), layers=trained_layers, params=params,
                     limit=40, steps=2, batch_size=4, val=8, val_every=2, progress=False)
    return model, method, dict(stats=stats, params=params, progress=False, **layers)


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _logits(model):
    with torch.no_grad():
        return model.next_token_logits([REQ.text, "The Louvre is in the city of"])


METHODS = registry.names()


@pytest.mark.parametrize("name", METHODS)
def test_reaches_target_and_undo_is_bit_exact(name):
    model, _, kw = _setup(name)
    before, logits = _state(model), _logits(model)
    assert not says_target(model, REQ)
    e = tl.edit(model, REQ, method=name, **kw)
    if name in IN_CONTEXT:
        assert model.query_text(REQ.text) != [REQ.text] and not torch.equal(_logits(model), logits)
    else:
        assert says_target(model, REQ), f"{name} did not reach its target"
    assert e.changes and journal(model).edits == [e]
    e.undo()
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())
    assert torch.equal(_logits(model), logits) and len(journal(model)) == 0


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("failure", ["raises", "non-finite"])
def test_a_failing_method_changes_nothing(name, failure, monkeypatch):
    model, method, kw = _setup(name)
    before, logits = _state(model), _logits(model)
    original = type(method).apply

    def failing(self, model, requests, layers, params, ctx):
        changes = original(self, model, requests, layers, params, ctx)
        if failure == "raises":
            raise RuntimeError("forced failure after the method's work")
        huge = torch.full((model.d_model, model.d_mlp), 3e38)
        return [*changes, ParamDelta.mlp_out(model, LAYER, huge), ParamDelta.mlp_out(model, LAYER, huge)]

    monkeypatch.setattr(type(method), "apply", failing)
    with pytest.raises(RuntimeError if failure == "raises" else ValueError):
        tl.edit(model, REQ, method=name, **kw)
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())
    assert torch.equal(_logits(model), logits) and len(journal(model)) == 0


@pytest.mark.parametrize("name", METHODS)
def test_save_load_apply_gives_the_same_logits(name, tmp_path):
    model, _, kw = _setup(name)
    tl.edit(model, REQ, method=name, **kw)
    edited = _logits(model)
    journal(model).save(tmp_path / "journal")
    fresh = tiny_model("llama")
    Journal.load(tmp_path / "journal").apply(fresh)
    assert torch.equal(_logits(fresh), edited)
    journal(fresh).undo_all()
    assert torch.equal(_logits(fresh), _logits(tiny_model("llama")))


@pytest.mark.parametrize("name", METHODS)
def test_bad_inputs_are_rejected_before_any_work(name, monkeypatch):
    model, method, kw = _setup(name)
    before = _state(model)
    calls = []
    monkeypatch.setattr(type(method), "apply", lambda *a, **k: calls.append("apply") or [])
    monkeypatch.setattr("tracelab.editing.api.key_stats", lambda *a, **k: calls.append("stats"))
    monkeypatch.setattr(type(method), "default_layers", lambda *a, **k: calls.append("trace") or [LAYER])

    class OtherParams:
        pass

    bad = [(dict(params=OtherParams()), TypeError, "params for")]
    if method.layers == "none":
        bad += [(dict(layer=3), ValueError, "does not edit at a layer")]
    else:
        bad += [(dict(layer=99) if method.layers == "one" else dict(layers=[1, 99]), ValueError, "out of range"),
                (dict(layer="middle"), TypeError, "layer must be")]
    for extra, error, match in bad:
        args = {**kw, **extra}
        if "layer" in extra:
            args.pop("layers", None)
        with pytest.raises(error, match=match):
            tl.edit(model, REQ, method=name, **args)
    with pytest.raises(ValueError, match="not in the prompt|not found"):
        tl.edit(model, {"subject": "Lyon", "prompt": "Paris is in", "target": "Rome"}, method=name, **kw)
    if not method.batch:
        with pytest.raises(ValueError, match="one fact at a time"):
            tl.edit(model, [REQ, Request("Lyon", "{} is in", "Italy")], method=name, **kw)
    assert calls == [] and len(journal(model)) == 0
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())


def test_a_method_registered_in_a_notebook_is_evaluated_like_the_others():
    model = tiny_model("llama")
    records = [{"subject": REQ.subject, "prompt": REQ.prompt, "target_new": REQ.target, "ground_truth": "Paris",
                "locality_prompt": "The Louvre is in", "locality_ground_truth": "Paris"}]
    result = tl.evaluate(model, records, "test-push", layer=LAYER, progress=False)
    assert result.summary["post"]["rome.efficacy_score"] == 100.0
    assert "test-push" in tl.editing.registry.names() and len(journal(model)) == 0
