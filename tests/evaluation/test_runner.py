"""The evaluation runner's modes and the suites, on a tiny model (and the shared data files)."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab as tl
from tracelab.editing import MemitParams, RomeParams, ValueParams, journal, key_stats
from tracelab.evaluation import get_suite, read_records
from tracelab.models.text import perplexity
from tracelab.models.tiny import tiny_model

RECORDS = [{"subject": s, "prompt": f"The city of {s}", "target_new": t, "ground_truth": "Paris",
            "rephrase_prompt": f"I went to the city of {s}", "locality_prompt": "The Louvre is in the city of",
            "locality_ground_truth": "Paris"}
           for s, t in [("The Eiffel Tower", "Rome"), ("Big Ben", "Berlin"), ("The Colosseum", "Madrid")]]
FAST_ROME = RomeParams(values=ValueParams(steps=6), n_templates=2, verify=False)
FAST_MEMIT = MemitParams(values=ValueParams(steps=6, clamp_norm=4.0), n_templates=2, mom2_weight=100.0)


@pytest.fixture(scope="module")
def model_and_stats():
    model = tiny_model("llama")
    return model, key_stats(model, [1, 2], tokens=2000, max_len=64, cache=False, progress=False)


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def test_single_batch_and_sequential_modes(model_and_stats):
    model, stats = model_and_stats
    before = _state(model)
    single = tl.evaluate(model, RECORDS, "rome", layer=2, stats=stats, params=FAST_ROME, progress=False)
    assert single.meta["mode"] == "single" and all("edit" in r for r in single.rows)
    batch = tl.evaluate(model, RECORDS, method="memit", layers=[1, 2], stats=stats, params=FAST_MEMIT, progress=False)
    assert batch.meta["mode"] == "batch" and batch.summary["post"]["prob_new"] > batch.summary["pre"]["prob_new"]
    seq = tl.evaluate(model, RECORDS, "memit", mode="sequential", checkpoints=(1, 2), layers=[1, 2], stats=stats,
                      params=FAST_MEMIT, progress=False)
    assert sorted(seq.checkpoints) == [1, 2, 3] and len(seq.meta["edit_seconds"]) == 3
    # the checkpoint after all edits is the rows' post
    assert seq.checkpoints[3]["prob_new"] == pytest.approx(seq.summary["post"]["prob_new"])
    assert "after 1" in seq.table()
    chunked = tl.evaluate(model, RECORDS, "memit", mode="sequential", batch_size=2, layers=[1, 2], stats=stats,
                          params=FAST_MEMIT, progress=False)
    assert len(chunked.meta["edit_seconds"]) == 2
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items()) and len(journal(model)) == 0


def test_a_memory_stream_with_model_health_at_each_checkpoint():
    model = tiny_model("llama")
    held_out = ["The weather was mild and the roads were quiet.", "A dog is a domesticated animal."]
    health = lambda m: {"perplexity": perplexity(m, held_out)}
    seq = tl.evaluate(model, RECORDS, "grace", mode="sequential", checkpoints=(1, 2), layer=2, at_checkpoint=health,
                      progress=False)
    assert sorted(seq.checkpoints) == [1, 2, 3] and seq.meta["edit_parameters"] == [2 * model.d_model + 2] * 3
    # GRACE's keys are far from the held-out text: its perplexity does not move
    assert all(c["perplexity"] == seq.meta["before"]["perplexity"] for c in seq.checkpoints.values())
    assert seq.checkpoints[3]["easyedit.reliability"] > seq.summary["pre"]["easyedit.reliability"]
    assert len(journal(model)) == 0 and perplexity(model, held_out) == seq.meta["before"]["perplexity"]


def test_an_edit_the_method_refuses_is_scored_as_not_made(monkeypatch):
    """KN finds no neuron for some facts: the runner scores that case unedited and goes on."""
    from tracelab.editing.methods.grace import Grace
    from tracelab.editing.registry import EditRefused

    model = tiny_model("llama")
    original = Grace.apply

    def refuse_big_ben(self, model, requests, layers, params, ctx):
        if requests[0].subject == "Big Ben":
            raise EditRefused("no way to edit Big Ben")
        return original(self, model, requests, layers, params, ctx)

    monkeypatch.setattr(Grace, "apply", refuse_big_ben)
    single = tl.evaluate(model, RECORDS, "grace", layer=2, progress=False)
    refused = [r for r in single.rows if "refused" in r["edit"]]
    assert len(refused) == 1 and refused[0]["post"]["prob_new"] == refused[0]["pre"]["prob_new"]
    assert refused[0]["post"]["easyedit.locality"] == 1.0        # the model as it was
    seq = tl.evaluate(model, RECORDS, "grace", mode="sequential", layer=2, progress=False)
    assert seq.meta["refused"] == ["no way to edit Big Ben"] and len(seq.meta["edit_seconds"]) == 2
    assert len(journal(model)) == 0


def test_perplexity_is_the_mean_token_nll():
    model = tiny_model("llama")
    text = "The city of Rome"
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model.hf(ids).logits[0, :-1], ids[0, 1:])
    assert perplexity(model, [text]) == pytest.approx(float(nll.exp()), rel=1e-5)
    assert perplexity(model, [text, text + " and Paris"]) != perplexity(model, [text])
    with pytest.raises(ValueError, match="two tokens"):
        perplexity(model, ["a"])


def test_modes_a_method_cannot_run_are_refused(model_and_stats):
    model, stats = model_and_stats
    with pytest.raises(ValueError, match="one fact at a time"):
        tl.evaluate(model, RECORDS, "rome", mode="batch", layer=2, stats=stats, progress=False)
    with pytest.raises(ValueError, match="unknown mode"):
        tl.evaluate(model, RECORDS, "rome", mode="parallel", layer=2, stats=stats, progress=False)
    with pytest.raises(ValueError, match="facts to keep"):
        tl.evaluate(model, "known", "rome", layer=2, stats=stats, progress=False)
    with pytest.raises(ValueError, match="either positionally or as method="):
        tl.evaluate(model, RECORDS, "rome", method="memit", progress=False)
    with pytest.raises(ValueError, match="unknown suite"):
        tl.evaluate(model, RECORDS, suite="fever", progress=False)


def test_zsre_suite_token_accuracy(shared_data):
    model = tiny_model("llama")
    cases = get_suite("zsre").read(shared_data / "zsre-sample.json", limit=3)
    assert cases[0].format == "zsre"
    res = tl.evaluate(model, shared_data / "zsre-sample.json", limit=3, progress=False)
    assert res.meta["suite"] == "zsre"
    assert set(res.rows[0]["pre"]) == {"easyedit.reliability", "easyedit.generality", "easyedit.locality", "prob_new"}
    same = tl.evaluate(model, "zsre", lambda: torch.no_grad(), limit=3, progress=False)  # a no-op intervention
    assert same.summary["post"]["easyedit.locality"] == 100.0


def test_known_facts_suite_under_an_edit(model_and_stats, shared_data):
    model, stats = model_and_stats
    e = tl.edit(model, subject="The Eiffel Tower", prompt="The city of {}", target="Rome", layer=2, stats=stats,
                params=FAST_ROME, progress=False)
    try:
        res = tl.evaluate(model, "known", e, limit=5, progress=False)
    finally:
        e.undo()
    assert res.meta["suite"] == "known" and len(res.rows) == 5
    assert set(res.summary["pre"]) == {"known.top1", "known.accuracy", "known.prob"}
    known = read_records(shared_data / "known_1000.json", limit=2)
    assert known[0].format == "known" and known[0].request.target == "Antarctica"


def test_bad_records_files_name_themselves(tmp_path):
    bad = tmp_path / "records.json"
    bad.write_text("[{\"subject\": ")
    with pytest.raises(ValueError, match=r"records.json is not valid JSON"):
        tl.evaluate(tiny_model("llama"), bad, progress=False)
    bad.write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(ValueError, match="unrecognised evaluation record"):
        tl.evaluate(tiny_model("llama"), bad, progress=False)


def test_records_that_cannot_be_edits_are_skipped_with_a_warning(tmp_path):
    good = {"subject": "Lyon", "src": "Where is Lyon?", "alt": "Italy", "answers": ["France"], "rephrase": "Lyon is in?",
            "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"}
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([good, {**good, "alt": ""}, good]))
    with pytest.warns(UserWarning, match=r"skipped 1 record\(s\) that cannot be edits.*empty target"):
        assert len(read_records(path)) == 2
