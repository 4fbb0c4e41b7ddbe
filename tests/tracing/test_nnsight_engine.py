"""The nnsight execution paths (run locally, remote=False) equal the native ones."""

from __future__ import annotations

import warnings

import pytest
import torch

import tracelab as tl
from tracelab.models.tiny import TINY_FAMILIES, tiny_model
from tracelab.steering import actadd, steer
from tracelab.steering.remote import steered_next_token_logits

PROMPT, SUBJECT = "The Eiffel Tower is in", "The Eiffel Tower"
OPTIONS = dict(samples=2, progress=False, max_batch_tokens=64)  # several traces per kind


def _trace(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model does not "know" the fact
        return tl.trace(model, PROMPT, SUBJECT, **{**OPTIONS, **kw})


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_nnsight_trace_equals_fast_engine(family):
    """Row 0 clean, restored rows copy its states: every cell equals the fast engine's."""
    model = tiny_model(family)
    noise = tl.GaussianNoise(std=0.5)
    fast, ns = _trace(model, corruption=noise), _trace(model, corruption=noise, engine="nnsight")
    for kind in fast.scores:
        assert (fast.scores[kind] - fast.corrupted[:, None, None]).abs().max() > 1e-4  # restoring matters
        torch.testing.assert_close(ns.scores[kind], fast.scores[kind], atol=1e-6, rtol=1e-5)
    assert ns.settings["engine"] == "nnsight" and ns.p_clean == pytest.approx(fast.p_clean, abs=1e-6)


@pytest.mark.parametrize("metric", ["log_prob", "logit_diff"])
def test_nnsight_trace_metrics_token_replace_and_users_object(metric):
    from nnsight import NNsight, TransformersModel

    model = tiny_model("llama")
    kw = dict(metric=metric, corruption=tl.TokenReplace("The Space Needle is in"))
    if len(model.tokens("The Space Needle is in")) != len(model.tokens(PROMPT)):
        kw["corruption"] = tl.GaussianNoise(std=0.4)
    fast = _trace(model, **kw)
    users = [NNsight(model.hf), TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")]
    for lm in users:  # the user's own nnsight object
        ns = _trace(lm, engine="nnsight", **kw)
        for kind in fast.scores:
            torch.testing.assert_close(ns.scores[kind], fast.scores[kind], atol=1e-5, rtol=1e-5)


def test_remote_needs_what_can_be_sent():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="GaussianNoise\\(std="):
        tl.trace(model, PROMPT, SUBJECT, engine="nnsight", remote=True, progress=False)
    with pytest.raises(ValueError, match="screen"):
        tl.trace(model, PROMPT, SUBJECT, engine="nnsight", remote=True, screen=3,
                 corruption=tl.GaussianNoise(std=0.1), progress=False)
    with pytest.raises(ValueError, match="engine='nnsight'"):
        tl.trace(model, PROMPT, SUBJECT, remote=True, progress=False)


@pytest.mark.parametrize("positions", ["all", "after_prompt"])
def test_nnsight_steering_equals_steer(positions):
    model = tiny_model("llama")
    v = actadd(model, "Love", "Hate", layer=[1, 2])
    prompts = ["I think that you are", "Hello"]  # different lengths: right padding
    with torch.no_grad(), steer(model, v, alpha=3.0, positions=positions):
        native = model.next_token_logits(prompts)
    remote_style = steered_next_token_logits(model, prompts, v, alpha=3.0, positions=positions)
    torch.testing.assert_close(remote_style, native, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (model.next_token_logits(prompts) - native).abs().max() > 1e-3  # steering did something
    with pytest.raises(ValueError, match="positions"):
        steered_next_token_logits(model, prompts, v, positions=[0])
