"""The robustness suite, combined suites and `tl.compare` (table, JSON, figure, report section), on a tiny model."""

from __future__ import annotations

import json

import pytest

import tracelab as tl
from tracelab.editing import FTLParams, Request
from tracelab.evaluation import Comparison, get_suite, to_record
from tracelab.evaluation.metrics import score_targets
from tracelab.evaluation.records import as_question as question
from tracelab.evaluation.suites.robustness import UNRELATED, typo, variants
from tracelab.io import UnreadableFile
from tracelab.models.tiny import tiny_model

CASES = [{"case_id": i, "requested_rewrite": {"prompt": p, "subject": s, "target_new": {"str": new},
                                              "target_true": {"str": true}},
          "paraphrase_prompts": [f"{s}, which is in"], "neighborhood_prompts": [f"The Louvre is in {true} and"],
          "generation_prompts": [f"{s} is"]}
         for i, (s, p, new, true) in enumerate([("The Eiffel Tower", "{} is located in the city of", "Rome", "Paris"),
                                                ("Danielle Darrieux", "The mother tongue of {} is", "English",
                                                 "French")])]


def test_the_robustness_variants_ask_the_same_fact_five_ways():
    r = Request("Danielle Darrieux", "The mother tongue of {} is", "English", target_true="French")
    v = variants(r)
    assert list(v) == ["plain", "long_prefix", "typo", "doubting", "question"]
    assert v["plain"] == r.text and v["long_prefix"] == UNRELATED + r.text
    assert v["typo"] == "The mother tongue of Danilele Darrieux is" and v["typo"] != r.text
    assert v["doubting"] == "I'm not sure, but I think " + r.text
    assert v["question"] == "Question: The mother tongue of Danielle Darrieux is what?\nAnswer:"
    assert question("Which city is it in?") == "Question: Which city is it in?\nAnswer:"
    assert [typo(s) for s in ("Paris", "Rio", "BBC One", "Aa")] == ["Pairs", "Rioo", "BBCC One", "Aaa"]


def test_robustness_scores_the_new_answer_against_the_true_one_per_variant():
    model = tiny_model("llama")
    case = to_record(CASES[0])
    metrics, _ = get_suite("robustness").score(model, case)
    asked = list(variants(case.request).values())
    new = score_targets(model, asked, ["Rome"] * 5).mean_nll
    true = score_targets(model, asked, ["Paris"] * 5).mean_nll
    assert [metrics[f"robust.{w}"] for w in ("plain", "long_prefix", "typo", "doubting", "question")] == \
        [float(n < t) for n, t in zip(new, true)]
    zsre = to_record({"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
                      "alt": "University of Michigan"})
    m, _ = get_suite("robustness").score(model, zsre)  # no true answer: all of the new answer's tokens are argmax
    acc = score_targets(model, list(variants(zsre.request).values()), ["University of Michigan"] * 5).accuracy
    assert list(m.values()) == [float(a == 1.0) for a in acc]


def test_combined_suites_score_each_case_once_per_edit_with_both():
    model = tiny_model("llama")
    res = tl.evaluate(model, CASES, "ft-l", suite="counterfact+robustness", layer=2, progress=False,
                      params=FTLParams(epsilon=1e-2))
    post = res.summary["post"]
    assert {"rome.efficacy_score", "robust.typo", "easyedit.locality"} <= set(post)
    assert 0 <= post["robust.typo"] <= 100 and res.meta["suite"] == "counterfact+robustness"
    with pytest.raises(ValueError, match=r"unknown suite 'nope'.*robustness.*join them with '\+'"):
        get_suite("counterfact+nope")
    with pytest.raises(ValueError, match="not both"):
        get_suite("counterfact+known")


def test_compare_runs_every_method_on_the_same_cases_and_reports_what_it_could_not(tmp_path):
    model = tiny_model("llama")
    cmp = tl.compare(model, CASES, ["ft-l", "grace", "mend"], n=2, layer=2, generation=True, progress=False)
    assert set(cmp.rows) == {"ft-l", "grace"}                           # MEND has no trained checkpoint here
    assert "tracelab train-editor mend" in cmp.methods["mend"]["error"]
    row = cmp.rows["grace"]
    assert row["efficacy"] == 100.0 and row["parameters"] > 0 and row["s/edit"] > 0
    assert row["fluency"] > 0 and row["fluency_before"] > 0 and 0 <= row["robustness"] <= 100
    assert cmp.methods["ft-l"]["edit_kwargs"] == {"layer": 2} and cmp.methods["grace"]["edit_kwargs"] == {}
    table = cmp.table()
    assert "grace" in table and "mend" in table and "not run" in table
    saved = Comparison.load(cmp.save(tmp_path / "compare.json"))
    assert saved.rows == json.loads(json.dumps(cmp.rows)) and saved.meta["cases"] == 2
    assert len(cmp.figure().data) == 2
    from tracelab.viz.report import render_report

    page = render_report(comparison=saved)
    assert "Every method compared" in page and "not run: ValueError" in page
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UnreadableFile, match="not a saved Comparison"):
        Comparison.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown method"):
        tl.compare(model, CASES, ["rome", "nope"], n=1)
    with pytest.raises(ValueError, match="single' or 'sequential"):
        tl.compare(model, CASES, ["rome"], n=1, mode="batch")


def test_compare_refuses_records_without_a_true_answer_naming_the_field():
    model = tiny_model("llama")
    bare = [{"subject": "The Eiffel Tower", "prompt": "{} is in", "target": "Rome"}]
    with pytest.raises(ValueError, match=r"record\(s\) \[0\] have no true answer .*ground_truth"):
        tl.compare(model, bare, ["grace"], n=1)
