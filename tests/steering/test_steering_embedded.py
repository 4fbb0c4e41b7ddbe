"""Steering the embedded SmolLM2-135M: CAA shifts a held-out behaviour both ways, RepE reads
sentiment on held-out pairs, hooks leave the model exactly as before, the CLI runs."""

from __future__ import annotations

import pytest
import torch

import tracelab as tl
from tracelab.cli import main
from tracelab.models.tiny import tiny_model
from tracelab.steering import caa, contrast_set, evaluate_steering, fact_vector, repe, split, steer

pytestmark = pytest.mark.slow
EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def sentiment():
    return contrast_set("sentiment")


def test_caa_shifts_held_out_behaviour_both_ways(embedded_clean, sentiment):
    model = embedded_clean
    train, _ = split(sentiment.pairs, held_out=0.25)
    v = caa(model, train, layers=[10], progress=False)          # a middle layer of 30
    base = sentiment.behaviour(model).mean()                    # prompts not in the pairs
    with steer(model, v, alpha=4.0):
        up = sentiment.behaviour(model).mean()
    with steer(model, -v, alpha=4.0):                          # the negated vector
        down = sentiment.behaviour(model).mean()
    assert up > base + 1.0 and down < base - 1.0, (float(down), float(base), float(up))


def test_repe_reads_sentiment_on_held_out_pairs(embedded_clean, sentiment):
    r = repe(embedded_clean, sentiment.pairs, held_out=0.25, seed=0, progress=False)
    assert r.meta["n_held_out"] >= 10
    best = r.best_layer()
    assert r.reading_accuracy[best] >= 0.9, r.reading_accuracy
    # The direction read at one layer also steers there, in the positive direction.
    v = r.at(best)
    with steer(embedded_clean, v, alpha=4.0):
        up = sentiment.behaviour(embedded_clean).mean()
    assert up > sentiment.behaviour(embedded_clean).mean()


def test_steering_leaves_logits_exactly_as_before(embedded_clean):
    model = embedded_clean
    v = fact_vector(model, "The Eiffel Tower", "{} is located in the city of", "Rome", layer=6)
    assert v.meta["target_true"] == "Paris"
    before = model.next_token_logits([EIFFEL, "The capital of Australia is"])
    with tl.steer(model, v, alpha=0.5):
        assert model.predict(EIFFEL, k=1)[0][0] == " Rome"
    assert torch.equal(model.next_token_logits([EIFFEL, "The capital of Australia is"]), before)
    with pytest.raises(KeyError):
        with tl.steer(model, v, alpha=1.0, positions="after_prompt"):
            raise KeyError("error inside the block")
    assert torch.equal(model.next_token_logits([EIFFEL, "The capital of Australia is"]), before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.hf.modules())


def test_vector_from_another_model_is_refused(embedded):
    small = tiny_model("llama")
    v = caa(small, [("The Eiffel Tower is in Paris.", "The Eiffel Tower is in Rome.")], layers=[1], progress=False)
    with pytest.raises(ValueError, match="d_model=64"):
        with steer(embedded, v, alpha=1.0):
            pass
    with pytest.raises(ValueError, match="out of range"):
        caa(embedded, [("a b", "c d")], layers=[30])


def test_cli_prints_generations_and_writes_sweep(tmp_path, capsys):
    out = tmp_path / "sweep.html"
    code = main(["steer", "--pairs", "sentiment", "--layer", "10", "--alpha", "4", "--max-new-tokens", "6",
                 "--prompt", "We ate at the new restaurant downtown. The food was",
                 "--sweep", str(out), "--alphas=-4,0,4", "--fluency-tokens", "0"])
    text = capsys.readouterr().out
    assert code == 0 and "unsteered:" in text and "steered:" in text and out.is_file()
    assert (tmp_path / "sweep.json").is_file()
    assert main(["steer", "--pairs", str(tmp_path / "missing.json"), "--layer", "3", "--prompt", "x"]) == 2


def test_fact_steering_scored_with_counterfact_metrics(embedded_clean, shared_data):
    res = evaluate_steering(embedded_clean, shared_data / "counterfact-edit-sample.json", layer=6, alpha=0.5,
                            limit=3, progress=False)
    assert len(res.rows) == 3 and res.meta["intervention"] == "steer"
    pre, post = res.summary["pre"], res.summary["post"]
    assert post["rome.efficacy_magnitude"] > pre["rome.efficacy_magnitude"]
    assert post["prob_true"] < pre["prob_true"]
