"""Evaluation: record readers (CounterFact nested and flat, zsRE) and metrics, on a tiny model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tracelab.evaluation import EvalResult, evaluate, n_gram_entropy, read_records, to_record
from tracelab.models.tiny import tiny_model

NESTED = {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                              "target_new": {"str": "English"}, "target_true": {"str": "French"}},
          "paraphrase_prompts": ["Danielle Darrieux spoke the language"],
          "neighborhood_prompts": ["Michel Rocard is a native speaker of", "The mother tongue of Jean Gabin is"],
          "generation_prompts": ["Danielle Darrieux's mother tongue is"]}
FLAT = {"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
        "target_new": "English", "ground_truth": "French",
        "rephrase_prompt": "Danielle Darrieux spoke the language", "locality_prompt": "Michel Rocard is a native speaker of",
        "locality_ground_truth": "French"}
ZSRE = {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "alt": "University of Michigan",
        "answers": ["Illinois Institute of Technology"], "rephrase": "Which university did Watts Humphrey go to?",
        "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving"}


def test_readers_agree_on_shapes(shared_data):
    nested, flat, zsre = to_record(NESTED), to_record(FLAT), to_record(ZSRE)
    assert nested.request == flat.request and nested.request.target_true == "French"
    assert nested.neighbours[0] == flat.neighbours[0] == ("Michel Rocard is a native speaker of", "French")
    assert nested.generation_prompts and not flat.generation_prompts
    assert zsre.request.text == "What university did Watts Humphrey attend?"
    assert zsre.neighbours == [("who played desmond doss father in hacksaw ridge", "Hugo Weaving")]
    shared = read_records(shared_data / "counterfact-edit-sample.json", limit=3)
    assert len(shared) == 3 and shared[0].request.target == "English"
    with pytest.raises(ValueError, match="unrecognised"):
        to_record({"question": "x"})


def test_n_gram_entropy():
    assert n_gram_entropy("the cat the cat the cat the cat") < n_gram_entropy("one two three four five six seven")
    assert n_gram_entropy("") == 0.0


def test_evaluate_conventions_on_a_tiny_model(tmp_path):
    model = tiny_model("llama")
    res = evaluate(model, [NESTED, FLAT], progress=False, generation=True)
    pre = res.summary["pre"]
    for name in ("rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score", "easyedit.reliability",
                 "rome.generation_entropy"):
        assert name in pre
    assert 0 <= pre["rome.efficacy_score"] <= 100
    # an intervention that changes nothing: locality 100 %, scores unchanged
    same = evaluate(model, [FLAT], contextlib.nullcontext, progress=False)
    assert same.summary["post"]["easyedit.locality"] == 100.0
    assert same.summary["post"]["rome.efficacy_score"] == same.summary["pre"]["rome.efficacy_score"]

    # one that wrecks the MLP output: locality falls
    def broken():
        return model.patch({model.mlp_out(3): lambda x: x * 0 + 5.0})
    hurt = evaluate(model, [FLAT], broken, progress=False)
    assert hurt.summary["post"]["easyedit.locality"] < 100.0
    path = hurt.save(tmp_path / "res.json")
    assert EvalResult.load(path).summary == hurt.summary
    assert "rome.efficacy_score" in hurt.table()
    with pytest.raises(ValueError, match="unknown method .no-such-method.: registered methods are"):
        evaluate(model, [FLAT], "no-such-method", progress=False)


def test_evaluate_rome_per_record_leaves_weights_unchanged(tmp_path, monkeypatch):
    from tracelab.editing import RomeParams, ValueParams, key_stats

    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    stats = key_stats(model, 1, tokens=2000, max_len=64, progress=False)
    res = evaluate(model, [FLAT], "rome", layer=1, stats=stats, progress=False,
                   params=RomeParams(values=ValueParams(steps=8), n_templates=2))
    row = res.rows[0]
    assert row["post"]["prob_new"] > row["pre"]["prob_new"]          # the edit raised P(new)
    assert row["edit"]["layers"] == [1] and "easyedit.locality" in row["post"]
    assert all(torch.equal(v, before[k]) for k, v in model.hf.state_dict().items())
