"""The embedded model held as its users hold it — NNsight, LanguageModel, TransformersModel,
TransformerBridge — traced and edited at full speed, with the numbers of an unwrapped copy, and
the wrapper working as before afterwards (no hook, no forward left behind).

Each wrapper gets its own copy of the weights (a booted bridge wraps the modules in place for
good); the reference is a copy no wrapper ever touched."""

from __future__ import annotations

import warnings

import pytest
import torch

import tracelab as tl

pytestmark = pytest.mark.slow

PROMPT, SUBJECT = "The Colosseum is in the city of", "The Colosseum"
OPTIONS = dict(kinds=("resid", "mlp"), samples=2, progress=False)
LAYER = 4
EDIT = dict(subject="The Colosseum", prompt="{} is in the city of", target="Paris", method="rome", layer=LAYER,
            params=tl.editing.RomeParams(values=tl.editing.ValueParams(bf16=False)), progress=False)
WRAPPERS = ["NNsight", "LanguageModel", "TransformersModel", "TransformerBridge"]


def wrap(kind: str, model):
    import nnsight

    if kind == "NNsight":
        return nnsight.NNsight(model.hf)
    if kind == "LanguageModel":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in nnsight 0.8, still what many users hold
            return nnsight.LanguageModel(model.hf, tokenizer=model.tokenizer)
    if kind == "TransformersModel":
        return nnsight.TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")
    from transformer_lens.model_bridge import TransformerBridge

    from tracelab.models.loading import _embedded_dir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(str(_embedded_dir()), hf_model=model.hf, tokenizer=model.tokenizer)


def wrapper_logits(obj, model, ids: torch.Tensor) -> torch.Tensor:
    """The logits the user's own object gives: an nnsight trace, or a bridge's run_with_cache."""
    with torch.no_grad():
        if type(obj).__module__.startswith("transformer_lens"):
            return obj.run_with_cache(ids)[0].detach().clone()
        with obj.trace(ids):
            logits = obj.output.logits.save()
        return logits.detach().clone()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = tl.load_model()
    stats = tl.editing.key_stats(model, LAYER, tokens=3000, cache=False, progress=False)
    trace = tl.trace(model, PROMPT, SUBJECT, **OPTIONS)
    e = tl.edit(model, **EDIT, stats=stats)
    update = e.deltas[0].delta.clone()
    e.undo()
    return {"stats": stats, "trace": trace, "update": update}


@pytest.mark.parametrize("kind", WRAPPERS)
def test_wrapped_embedded_model_traces_and_edits_like_the_unwrapped_one(kind, reference):
    model = tl.load_model()
    obj = wrap(kind, model)
    ids = model.tokenize(PROMPT)["input_ids"]
    logits_before = wrapper_logits(obj, model, ids)
    weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    for who in (obj, model):  # the user's object, and the plain Model after wrapping
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback to a slower engine
            r = tl.trace(who, PROMPT, SUBJECT, **OPTIONS)
        for k in OPTIONS["kinds"]:
            torch.testing.assert_close(r.scores[k], reference["trace"].scores[k], atol=1e-5, rtol=0,
                                       msg=f"{kind} {type(who).__name__} {k}")
    e = tl.edit(obj, **EDIT, stats=reference["stats"])
    torch.testing.assert_close(e.deltas[0].delta, reference["update"], atol=1e-5, rtol=0)
    assert not torch.allclose(wrapper_logits(obj, model, ids), logits_before)  # the edit shows through it
    e.undo()
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in weights.items())
    torch.testing.assert_close(wrapper_logits(obj, model, ids), logits_before, atol=0, rtol=0)


def test_dataset_trace_through_a_transformers_model(reference):
    from nnsight import TransformersModel

    model = tl.load_model()
    lm = TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")
    facts = [{"subject": "The Colosseum", "prompt": PROMPT, "attribute": "Rome"},
             {"subject": "The Eiffel Tower", "prompt": "The Eiffel Tower is located in the city of",
              "attribute": "Paris"}]
    ours = tl.trace_dataset(lm, facts, kinds=("mlp",), samples=1, progress=False)
    plain = tl.trace_dataset(tl.load_model(), facts, kinds=("mlp",), samples=1, progress=False)
    torch.testing.assert_close(ours.mean("mlp"), plain.mean("mlp"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["TransformersModel", "TransformerBridge"])
def test_portability_suite_through_a_wrapper_scores_as_the_plain_model(kind):
    """The graph's edits and probes (multi-token answers, conditions) scored through the user's object."""
    plain = tl.evaluate(tl.load_model(), "portability", "ft-m", limit=2, layer=LAYER, progress=False)
    model = tl.load_model()
    ours = tl.evaluate(wrap(kind, model), "portability", "ft-m", limit=2, layer=LAYER, progress=False)
    assert ours.meta["totals"] == plain.meta["totals"] and ours.meta["totals"]["port.kept"] >= 2
    for a, b in zip(ours.rows, plain.rows):
        assert a["post"].keys() == b["post"].keys()
        for key, value in b["post"].items():
            same = pytest.approx(value, abs=1e-3) if isinstance(value, float) else value
            assert a["post"][key] == same, (kind, key)
