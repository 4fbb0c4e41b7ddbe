"""SERAC on a tiny model: the edit memory routes in-scope prompts to the counterfactual model and
leaves every other prompt (and row) to the base model exactly; edits stack and undo one by one;
a saved edit refuses a checkpoint or base model it was not made with."""

from __future__ import annotations

import pytest
import torch

import tracelab as tl
from tracelab.data import shared_data
from tracelab.editing import Journal, Request, SeracParams, journal
from tracelab.editing.methods.serac import MARKER, SeracEdit, counterfactual
from tracelab.models.tiny import tiny_model
from tracelab.training import train_editor

EIFFEL = Request("The Eiffel Tower", "The city of {}", "Rome")
LOUVRE = Request("The Louvre", "{} is a museum in", "Berlin")
OTHER = "Water boils at a temperature of"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRACELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        model = tiny_model("llama")
        meta = train_editor("serac", model, shared_data("zsre-sample.json"), limit=40, steps=4, batch_size=4, val=8,
                            val_every=2, params=SeracParams(rank=2, scope_dim=16, scope_steps=50, lr=1e-2),
                            progress=False)
        yield model, meta


def _sharp(edit) -> None:
    """Make the tiny model's classifier strict: in scope only for (nearly) the edit's own prompt."""
    edit.changes[0].editor.scale.data.fill_(1000.0)
    edit.changes[0].editor.bias.data.fill_(-999.0)


def test_training_records_the_classifier_and_adapter_without_layers(trained):
    _, meta = trained
    assert meta["method"] == "serac" and meta["layers"] == [] and meta["status"] == "finished"
    assert {"reliability", "generality", "locality"} <= set(meta["history"][-1])


def test_in_scope_prompts_reach_the_counterfactual_model_and_others_the_base_model_exactly(trained):
    model, _ = trained
    base = model.next_token_logits([OTHER, EIFFEL.text])
    e = tl.edit(model, EIFFEL, method="serac", progress=False)
    _sharp(e)
    assert e.changes[0].kind == "serac" and e.info["parameters_changed"] == 0
    assert model.query_text([EIFFEL.text, OTHER]) == [f"{MARKER}{EIFFEL.text} Rome\n{EIFFEL.text}", OTHER]
    after = model.next_token_logits([OTHER, EIFFEL.text])
    assert torch.equal(after[0], base[0]) and not torch.equal(after[1], base[1])
    # in one padded batch, a marked row runs the counterfactual model and an unmarked row the base one
    batch = model.tokenize([model.query_text(EIFFEL.text)[0], OTHER])
    with torch.no_grad():
        mixed = model.hf(**batch).logits
        alone = model.hf(**model.tokenize([OTHER])).logits
    n = int(batch["attention_mask"][1].sum())
    assert torch.allclose(mixed[1, :n], alone[0, :n], atol=1e-5)
    e.undo()
    assert model.query_text([EIFFEL.text]) == [EIFFEL.text] and not model.query_rewriters
    assert torch.equal(model.next_token_logits([OTHER, EIFFEL.text]), base)


def test_edits_stack_route_to_their_own_fact_and_undo_alone(trained):
    model, _ = trained
    first = tl.edit(model, EIFFEL, method="serac", progress=False)
    second = tl.edit(model, LOUVRE, method="serac", progress=False)
    _sharp(first)
    assert model.query_text([EIFFEL.text, LOUVRE.text]) == [f"{MARKER}{EIFFEL.text} Rome\n{EIFFEL.text}",
                                                           f"{MARKER}{LOUVRE.text} Berlin\n{LOUVRE.text}"]
    first.undo()
    assert model.query_text([EIFFEL.text, LOUVRE.text]) == [EIFFEL.text, f"{MARKER}{LOUVRE.text} Berlin\n{LOUVRE.text}"]
    second.undo()
    assert not model.query_rewriters and len(journal(model)) == 0


def test_cached_generation_keeps_each_row_on_its_model(trained):
    model, _ = trained
    e = tl.edit(model, EIFFEL, method="serac", progress=False)
    editor = e.changes[0].editor
    e.undo()
    texts = [f"{MARKER}{EIFFEL.text} Rome\n{EIFFEL.text}", OTHER]
    with counterfactual(model, editor):
        _, cached = model.generate(texts, 4)
        batch = model.tokenize(texts)  # right-padded, so continue each row on its own without a cache
        for row, text in enumerate(texts):
            ids = model.tokenize([text])["input_ids"]
            for _ in range(4):
                with torch.no_grad():
                    ids = torch.cat([ids, model.hf(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
            assert ids[0, -4:].tolist() == cached[row].tolist(), f"row {row}: {batch['input_ids'][row]}"


def test_a_saved_edit_refuses_another_editor_or_base_model(trained, tmp_path):
    model, _ = trained
    e = tl.edit(model, EIFFEL, method="serac", progress=False)
    journal(model).save(tmp_path / "edits")
    e.undo()
    replayed = Journal.load(tmp_path / "edits")
    replayed.apply(model)
    assert model.query_text(EIFFEL.text)[0].startswith(MARKER)
    journal(model).undo_all()
    other = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="base model"):
        Journal.load(tmp_path / "edits").apply(other)
    assert not other.query_rewriters
    change = e.changes[0]
    forged = SeracEdit(change.fact, change.key, {**change.checkpoint, "tensors": "0" * 16})
    with pytest.raises(ValueError, match="restore that checkpoint"):
        forged.apply(model)
    assert not model.query_rewriters


def test_without_a_checkpoint_the_error_prints_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path))
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"tracelab train-editor serac --data \S+ --limit 500   \(or"):
        tl.edit(model, EIFFEL, method="serac", progress=False)
    assert not model.query_rewriters and len(journal(model)) == 0
