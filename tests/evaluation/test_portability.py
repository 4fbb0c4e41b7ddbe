"""The knowledge graph, its probes, the MQuAKE / RippleEdits readers and the portability suite."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab as tl
from tracelab.editing import journal
from tracelab.evaluation import get_suite, read_records, to_record
from tracelab.evaluation.graph import PROPAGATION, KnowledgeGraph, Probe, chain_prompt, graph_path, knowledge_graph
from tracelab.evaluation.suites.portability import graph_records
from tracelab.io import UnreadableFile
from tracelab.models.tiny import tiny_model

MQUAKE = {
    "case_id": 7,
    "requested_rewrite": [
        {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "relation_id": "P131",
         "target_new": {"str": "Rome", "id": "Q220"}, "target_true": {"str": "Paris", "id": "Q90"},
         "question": "In which city is the Eiffel Tower?"},
        {"prompt": "The official language of {} is", "subject": "Italy", "relation_id": "P37",
         "target_new": {"str": "Greek", "id": "Q9129"}, "target_true": {"str": "Italian", "id": "Q652"}}],
    "questions": ["What is the official language of the country where the Eiffel Tower is?",
                  "Which language is official in the country of the Eiffel Tower?"],
    "answer": "French", "answer_alias": ["French language"], "new_answer": "Greek", "new_answer_alias": [],
    "single_hops": [{"question": "Where is the Eiffel Tower?", "cloze": "The Eiffel Tower is located in the city of",
                     "answer": "Paris", "answer_alias": []},
                    {"question": "Paris is in which country?", "cloze": "Paris is located in the country of",
                     "answer": "France", "answer_alias": []},
                    {"question": "What is France's language?", "cloze": "The official language of France is",
                     "answer": "French", "answer_alias": []}],
}


def _query(prompt, value, aliases=(), sid="Q243"):
    return {"prompt": prompt, "answers": [{"value": value, "aliases": list(aliases)}], "subject_id": sid}


RIPPLE = {
    "example_type": "popular",
    "edit": {"prompt": "The name of the country of the Eiffel Tower is Spain.", "subject_id": "Q243",
             "relation": "COUNTRY", "target_id": "Q29",
             "original_fact": {"prompt": "The name of the country of the Eiffel Tower is Sweden.", "subject_id": "Q243"}},
    "Compositionality_I": [{"test_queries": [_query("The capital of the country of the Eiffel Tower is", "Madrid")],
                            "test_condition": "OR",
                            "condition_queries": [_query("The capital of Spain is", "Madrid", sid="Q29")]}],
    "Relation_Specificity": [{"test_queries": [_query("The name of the architect of the Eiffel Tower is",
                                                      "Gustave Eiffel", ["Eiffel"])],
                              "test_condition": "OR", "condition_queries": []}],
    "Logical_Generalization": [], "Compositionality_II": [], "Subject_Aliasing": [], "Forgetfulness": [],
}


def test_the_shipped_graph_is_checked_when_read_and_a_changed_one_is_refused(tmp_path):
    g = knowledge_graph()
    meta = g.meta
    assert meta["facts"]["kept"] == len(g.facts) > 100 and meta["facts"]["candidates"] > meta["facts"]["kept"]
    assert meta["chains"]["kept"] == len(g.chains) and meta["chains"]["kept_3_hops"] > 0
    data = json.loads(graph_path().read_text())
    data["facts"][0][2] = "Atlantis"  # a fact changed after the build
    bad = tmp_path / "graph.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UnreadableFile, match="checksum"):
        knowledge_graph(str(bad))
    bad.write_text("{}")
    with pytest.raises(UnreadableFile, match="tracelab-knowledge-graph"):
        knowledge_graph(str(bad))


def test_chains_read_as_one_cloze():
    assert chain_prompt("the Eiffel Tower", ("P131", "P17")) == "The Eiffel Tower is located in the country of"
    assert chain_prompt("the Eiffel Tower", ("P131", "P17", "P36")) == \
        "The capital of the country where the Eiffel Tower is located is"
    assert chain_prompt("Lyon", ("P17", "P37")) == "The official language of the country where Lyon is located is"


def test_an_edit_of_a_graph_fact_gives_probes_that_follow_the_new_object():
    facts = {("the Eiffel Tower", "P131"): "Paris", ("Paris", "P17"): "France", ("Rome", "P17"): "Italy",
             ("France", "P36"): "Paris", ("Paris", "P1376"): "France", ("Italy", "P36"): "Rome",
             ("Rome", "P1376"): "Italy", ("France", "P37"): "French", ("Italy", "P37"): "Italian",
             ("France", "P38"): "euro"}
    g = KnowledgeGraph(facts, {}, {"France": {"the French Republic": ["P36"]}},
                       [("the Eiffel Tower", ("P131", "P17")), ("the Eiffel Tower", ("P131", "P17", "P37")),
                        ("the Eiffel Tower", ("P131", "P17", "P36"))])
    by = {(p.category, p.prompt): p for p in g.probes("the Eiffel Tower", "P131", "Rome")}
    ci = by[("compositionality_1", "The Eiffel Tower is located in the country of")]
    assert ci.answers == ("Italy",) and ci.before == ("France",)
    # the unedited model must know the chain (old answer) and the new object's own fact
    assert ci.conditions == (("The Eiffel Tower is located in the country of", ("France",)),
                             ("Rome is located in the country of", ("Italy",)))
    three = by[("multi_hop_3", "The official language of the country where the Eiffel Tower is located is")]
    assert three.answers == ("Italian",) and three.hops == 3
    assert by[("multi_hop_3", "The capital of the country where the Eiffel Tower is located is")].answers == ("Rome",)
    # a chain whose end does not move is no test of the edit: France's currency has no probe from Rome
    assert not any("currency" in p.prompt for p in by.values())
    capital = {(p.category, p.prompt): p for p in g.probes("France", "P36", "Rome")}
    assert capital[("logical_generalization", "Rome is the capital of")].answers == ("France",)
    assert capital[("subject_aliasing", "The capital of the French Republic is")].answers == ("Rome",)
    kept = capital[("relation_specificity", "The currency of France is the")]
    assert kept.answers == kept.before == ("euro",)
    moved = g.probes("Paris", "P17", "Italy")  # Paris in Italy: "Paris is the capital of" France is no longer a fact
    assert not any(p.category == "relation_specificity" for p in moved)
    with pytest.raises(ValueError, match="no fact"):
        g.probes("the Eiffel Tower", "P36", "Rome")
    with pytest.raises(ValueError, match="unknown probe category"):
        Probe("ripple", "x", ("y",))


def test_the_graphs_own_edits_read_as_records_with_probes_and_neighbours():
    records = graph_records(limit=8)
    assert len(records) == 8 and len({r.case_id for r in records}) == 8
    assert len({r.case_id.split("|")[1] for r in records}) >= 3  # relations take turns
    for r in records:
        assert r.request.subject in r.request.text and r.request.target != r.request.target_true
        assert any(p.category in PROPAGATION for p in r.probes) and len(r.neighbours) == 2
        for p in r.probes:
            assert p.before is None or (p.answers != p.before) == (p.category in PROPAGATION)
    again = to_record({**records[0].request.to_dict(), "probes": [p.to_dict() for p in records[0].probes]})
    assert again.probes == records[0].probes and again.format == "portability"


def test_mquake_records_carry_every_rewrite_and_multi_hop_questions():
    (r,) = read_records([MQUAKE])
    assert r.format == "mquake" and [q.target for q in r.requests] == ["Rome", "Greek"]
    assert r.request.text == "The Eiffel Tower is located in the city of" and r.request.target_true == "Paris"
    assert [p.category for p in r.probes] == ["multi_hop_3", "multi_hop_3"]
    p = r.probes[0]
    assert p.prompt.startswith("Question: What is the official language") and p.prompt.endswith("\nAnswer:")
    assert p.answers == ("Greek",) and p.before == ("French", "French language")
    assert ("Paris is located in the country of", ("France",)) in p.conditions


def test_rippleedits_records_in_their_release_format_and_easyedits():
    (r,) = read_records([RIPPLE])
    # the edit and its original fact share "S": the cloze is cut at a word boundary
    assert (r.request.text, r.request.subject) == ("The name of the country of the Eiffel Tower is", "Eiffel Tower")
    assert (r.request.target, r.request.target_true) == ("Spain", "Sweden")
    ci, rs = r.probes
    assert ci.category == "compositionality_1" and ci.conditions == (("The capital of Spain is", ("Madrid",)),)
    assert rs.category == "relation_specificity" and rs.answers == ("Gustave Eiffel", "Eiffel") == rs.before
    flat = {"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower", "target_new": "Rome",
            "ground_truth": "Paris", "Compositionality_I": [{"prompt": "The Eiffel Tower is in the country of",
                                                             "targets": ["", "Italy"]}],
            "Subject_Aliasing": [{"prompt": "La tour Eiffel is in", "targets": ["Rome"]}]}
    (f,) = read_records([flat])
    assert [(p.category, p.answers, p.conditions) for p in f.probes] == [
        ("compositionality_1", ("Italy",), ()), ("subject_aliasing", ("Rome",), ())]


def _known_pair(model) -> tuple[str, str]:
    """A prompt and a one-word answer the (random) model gives: its greedy next token, where that
    token is a word of its own."""
    from tracelab.evaluation.metrics import gives

    for prompt in ["The city of Paris is", "A river runs through", "My favourite colour is", "The cat sat on the"]:
        token = model.tokenizer.decode([int(model.next_token_logits(prompt)[0].argmax())])
        if token.startswith(" ") and token.strip().isalpha() and gives(model, [(prompt, (token.strip(),))])[0]:
            return prompt, token.strip()
    raise AssertionError("the tiny model gives no one-word answer to any test prompt")


def test_probes_the_unedited_model_does_not_know_are_dropped_and_counted_not_failed():
    model = tiny_model("llama")
    known, said = _known_pair(model)
    other, wrong = "A river runs through", "Zanzibar"
    record = {"subject": "Paris", "prompt": "The city of {} is", "target": "Rome", "target_true": "Paris",
              "probes": [Probe("compositionality_1", known, (said,), (said,), ((known, (said,)),)).to_dict(),
                         Probe("compositionality_1", other, (wrong,), (said,), ((other, (wrong,)),)).to_dict(),
                         Probe("relation_specificity", known, (wrong,), (wrong,)).to_dict()]}
    res = tl.evaluate(model, [record], suite="portability", progress=False)
    pre = res.rows[0]["pre"]
    assert (pre["port.kept"], pre["port.dropped"]) == (2, 1) and res.meta["totals"] == {"port.kept": 2, "port.dropped": 1}
    assert pre["portability"] == 1.0 and pre["port.specificity"] == 0.0
    with pytest.raises(ValueError, match="needs `probes`"):
        tl.evaluate(model, [{**record, "probes": []}], suite="portability", progress=False)


def test_a_suite_that_needs_a_field_names_it(monkeypatch):
    suite = get_suite("robustness")
    monkeypatch.setattr(type(suite), "needs", ("request.target_true",))
    records = read_records([{"subject": "Paris", "prompt": "{} is in", "target": "Rome"}])
    with pytest.raises(ValueError, match="needs `request.target_true`"):
        tl.evaluate(tiny_model("llama"), records, suite=suite, progress=False)


def test_a_case_of_several_rewrites_is_edited_whole_and_undone_whole():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    mquake = {**MQUAKE, "requested_rewrite": [
        {**rw, "prompt": "{} is in", "subject": s} for rw, s in zip(MQUAKE["requested_rewrite"], ["Paris", "Rome"])]}
    # GRACE edits one fact at a time: the case's two rewrites are two edits, undone together
    res = tl.evaluate(model, [mquake], "grace", suite="portability", mode="single", layer=1, progress=False)
    assert res.rows[0]["edit"]["parameters"] == 2 * (2 * model.d_model + 2)
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items()) and len(journal(model)) == 0


@pytest.mark.slow
def test_the_embedded_model_knows_what_the_graph_ships_and_an_edit_is_probed(embedded_clean):
    model, g = embedded_clean, knowledge_graph()
    from tracelab.evaluation.graph import RELATIONS, fill
    from tracelab.evaluation.metrics import gives

    facts = sorted(g.facts.items())[::5]
    assert all(gives(model, [(fill(RELATIONS[r].template, s), (o,)) for (s, r), o in facts]))
    assert all(gives(model, [(chain_prompt(h, rs), (g.path(h, rs)[-1],)) for h, rs in g.chains]))
    res = tl.evaluate(model, "portability", "ft-m", limit=2, layer=4, progress=False)
    assert res.meta["totals"]["port.dropped"] == 0 and res.meta["totals"]["port.kept"] >= 2
    assert res.summary["post"]["portability"] is not None and len(journal(model)) == 0


def test_unedited_scores_given_to_the_runner_must_be_one_per_case():
    model = tiny_model("llama")
    records = graph_records(limit=2)
    with pytest.raises(ValueError, match="got 1 for 2 cases"):
        tl.evaluate(model, records, "grace", suite="portability", layer=1, unedited=[({}, None)], progress=False)


def test_reference_consistency_is_higher_for_text_about_the_new_answer():
    from tracelab.evaluation.consistency import reference_score, reference_texts

    g = knowledge_graph()
    rome = reference_texts(g)["Rome"]
    assert "The capital of Italy is Rome." in rome and "The Colosseum is located in the city of Rome." in rome
    about = reference_score(["Rome is in Italy. The Colosseum and the Trevi Fountain are in Rome."], "Rome")
    other = reference_score(["Tokyo is in Japan, where people speak Japanese and pay in yen."], "Rome")
    assert 0 <= other < about <= 1
    assert reference_score(["anything"], "Atlantis") is None
