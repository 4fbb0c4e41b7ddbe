"""One real ROME edit on the embedded SmolLM2-135M: the Eiffel Tower moves to Rome, and back."""

from __future__ import annotations

import pytest
import torch

import tracelab as tl
from tracelab.editing import journal, key_stats

PROMPT = "The Eiffel Tower is located in the city of"
LAYER = 4


@pytest.fixture(scope="module")
def stats(embedded, tmp_path_factory):
    import os
    old = os.environ.get("TRACELAB_CACHE")
    os.environ["TRACELAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield key_stats(embedded, LAYER, tokens=4000, progress=False)  # small stats: a few thousand tokens
    finally:
        if old is None:
            os.environ.pop("TRACELAB_CACHE")
        else:
            os.environ["TRACELAB_CACHE"] = old


@pytest.mark.slow
def test_rome_eiffel_to_rome_and_undo(embedded_clean, stats):
    model = embedded_clean
    before = model.hf.state_dict()[model.mlp_out_weight(LAYER).name].clone()
    e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
                layer=LAYER, stats=stats, progress=False)
    assert model.predict(PROMPT, 1)[0][0] == " Rome"                                         # efficacy
    assert model.predict("The Louvre is located in the city of", 1)[0][0] == " Paris"        # neighbour kept
    assert e.info["seconds"]["values"] > 0 and journal(model).edits == [e]
    e.undo()
    assert torch.equal(model.hf.state_dict()[model.mlp_out_weight(LAYER).name], before)     # bit for bit
    assert model.predict(PROMPT, 1)[0][0] == " Paris"


def test_target_already_the_answer_is_a_noop(embedded_clean, stats):
    with pytest.warns(UserWarning, match="already answers"):
        e = tl.edit(embedded_clean, subject="The Eiffel Tower", prompt="{} is located in the city of",
                    target="Paris", layer=LAYER, stats=stats, progress=False)
    assert e.deltas == [] and len(journal(embedded_clean)) == 0
    e.undo()  # a no-op edit undoes to nothing


@pytest.mark.slow
def test_auto_layer_traces_the_mlp_peak(embedded_clean, stats, monkeypatch):
    """layer="auto" edits at the traced MLP peak at the last subject token (kept last: needs tracing).
    The trace runs with 2 noise samples here to keep the test short."""
    import tracelab.tracing as tracing

    real, traces = tracing.trace, []

    def quick_trace(*args, **kwargs):
        traces.append(real(*args, **dict(kwargs, samples=2)))
        return traces[-1]

    monkeypatch.setattr(tracing, "trace", quick_trace)
    e = tl.edit(embedded_clean, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
                layer="auto", stats_tokens=4000, progress=False)
    assert len(traces) == 1 and e.layers == [traces[0].peak("mlp")]
    assert embedded_clean.predict(PROMPT, 1)[0][0] == " Rome"
    e.undo()


@pytest.mark.slow
def test_wise_routes_the_edit_and_its_paraphrase_to_the_side_memory_and_nothing_else(embedded_clean):
    """WISE at its defaults on the real model: the edit and a paraphrase go through the side memory
    (the new answer), unrelated prompts through the base projection (bit for bit), and undo."""
    model = embedded_clean
    others = ["The Louvre is located in the city of", "Albert Einstein was born in the country of"]
    before = {p: model.next_token_logits([p]) for p in others + [PROMPT]}
    e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
                method="wise", progress=False)
    assert e.changes[0].target == "blocks.25.mlp_out_proj"
    assert model.predict(PROMPT, 1)[0][0] == " Rome"
    assert model.predict("Where is the Eiffel Tower? It is in the city of", 1)[0][0] == " Rome"
    assert all(torch.equal(model.next_token_logits([p]), before[p]) for p in others)
    e.undo()
    assert torch.equal(model.next_token_logits([PROMPT]), before[PROMPT])


@pytest.mark.slow
def test_mend_trains_and_edits_the_real_model_at_its_last_three_layers(embedded_clean, tmp_path, monkeypatch):
    """Two training steps of MEND on the embedded model (the real layer signature: SmolLM2's MLP
    output projections), a checkpoint tl.edit finds, factored ParamDeltas at layers 27–29, undo."""
    from tracelab.data import shared_data
    from tracelab.editing import MendParams

    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path))
    model = embedded_clean
    meta = tl.train_editor("mend", model, shared_data("zsre-sample.json"), limit=12, steps=2, batch_size=2, val=2,
                           val_every=2, params=MendParams(rank=16, norm_edits=4, edit_lr=1e-2), progress=False)
    assert meta["layers"] == [27, 28, 29] and meta["history"][-1]["step"] == 2
    before = model.next_token_logits([PROMPT])
    e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
                method="mend", progress=False)
    assert [c.layer for c in e.changes] == [27, 28, 29] and all(c.factors is not None for c in e.changes)
    assert not torch.equal(model.next_token_logits([PROMPT]), before)
    e.undo()
    assert torch.equal(model.next_token_logits([PROMPT]), before)


@pytest.mark.slow
def test_serac_trains_and_routes_the_real_model(embedded_clean, tmp_path, monkeypatch):
    """SERAC on the embedded model: the classifier fitted on its states, two adapter steps at all 30
    MLP output projections, an edit that routes its own prompt and leaves an unrelated one to the
    base model (its logits bit for bit), undo."""
    from tracelab.data import shared_data
    from tracelab.editing import SeracParams
    from tracelab.editing.methods.serac import MARKER

    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path))
    model = embedded_clean
    meta = tl.train_editor("serac", model, shared_data("zsre-sample.json"), limit=40, steps=2, batch_size=2, val=4,
                           val_every=2, params=SeracParams(scope_steps=100), progress=False)
    assert meta["layers"] == [] and meta["history"][-1]["step"] == 2
    other = "Water boils at a temperature of"
    before = [model.next_token_logits([p]) for p in (PROMPT, other)]
    e = tl.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome",
                method="serac", progress=False)
    assert model.query_text([PROMPT, other]) == [f"{MARKER}{PROMPT} Rome\n{PROMPT}", other]
    assert torch.equal(model.next_token_logits([other]), before[1])  # alone: a batch's padding moves the last bits
    assert not torch.equal(model.next_token_logits([PROMPT]), before[0])
    e.undo()
    assert all(torch.equal(model.next_token_logits([p]), b) for p, b in zip((PROMPT, other), before))
