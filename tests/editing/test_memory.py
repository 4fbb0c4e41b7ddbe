"""Memory editors (GRACE, T-Patcher): the codebook's rules and the patch neurons' equation, a stream
with an undo from its middle, unrelated inputs untouched, bad input refused with nothing changed."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab as tl
from tracelab.editing import GraceParams, Journal, Request, TPatcherParams, journal
from tracelab.editing.methods.grace import GraceEntry
from tracelab.editing.methods.tpatcher import PatchNeurons
from tracelab.editing.toolkit.values import says_target
from tracelab.models.tiny import tiny_model

# single-token targets, the subject at the prompt's end (a tiny random model's attention carries
# little from earlier positions)
STREAM = [Request("The Eiffel Tower", "The city of {}", "Rome"), Request("The Louvre", "The city of {}", "Paris"),
          Request("Mount Fuji", "The city of {}", "Rome")]
ELSEWHERE = ["Something else entirely", "The Colosseum is big"]
LAYER = 2


def _entry(key, value, epsilon, label):
    e = GraceEntry(len(key))
    e.key.copy_(torch.tensor(key)), e.value.data.copy_(torch.tensor(value))
    e.epsilon.fill_(epsilon), e.label.fill_(label)
    return e


def test_conflicting_balls_split_and_get_their_radius_back_when_one_leaves():
    a = _entry([0.0, 0.0], [10.0, 10.0], 1.0, label=1)
    b = _entry([1.0, 0.0], [20.0, 20.0], 1.0, label=2)     # 1 apart, another answer: radii 0.5 each
    x = torch.tensor([[[0.4, 0.0], [0.6, 0.0], [3.0, 3.0]]])  # [batch 1, pos 3, width 2]
    out = GraceEntry.forward_group(x, [a, b], {})
    assert out[0, 0].tolist() == [10.0, 10.0] and out[0, 1].tolist() == [20.0, 20.0]
    assert out[0, 2].tolist() == [3.0, 3.0]                   # far from every key: untouched
    alone = GraceEntry.forward_group(x, [a], {})              # b gone: a's ball is 1.0 again
    assert alone[0, 1].tolist() == [10.0, 10.0]
    same = _entry([1.0, 0.0], [30.0, 30.0], 1.0, label=1)    # the same answer: no split, nearest wins
    both = GraceEntry.forward_group(x, [a, same], {})
    assert both[0, 0].tolist() == [10.0, 10.0] and both[0, 1].tolist() == [30.0, 30.0]
    twin = _entry([0.0, 0.0], [40.0, 40.0], 1.0, label=3)    # the same key, another answer: the newest
    assert GraceEntry.forward_group(x, [a, twin], {})[0, :2].tolist() == [[40.0, 40.0]] * 2
    assert GraceEntry.forward_group(x[:, 2:], [a, b], {}) is None


def test_patch_neurons_add_relu_of_their_keys_times_their_values():
    p = PatchNeurons(3, n=2)
    p.keys.data = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p.bias.data = torch.tensor([0.0, -1.0])
    p.values.data = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
    x, y = torch.tensor([[[2.0, 3.0, 0.0], [-1.0, 0.5, 0.0]]]), torch.zeros(1, 2, 3)
    # a = [2, 2] → y + 2·v₀ + 2·v₁;  a = [−1, −0.5] → both silent, y exactly
    assert p(x, y).tolist() == [[[2.0, 2.0, 12.0], [0.0, 0.0, 0.0]]]


@pytest.mark.parametrize("method", ["grace", "t-patcher"])
def test_a_stream_of_edits_and_an_undo_from_its_middle(method):
    model = tiny_model("llama")
    before = {p: model.next_token_logits([p]) for p in ELSEWHERE + [r.text for r in STREAM]}
    assert not any(says_target(model, r) for r in STREAM)
    edits = [tl.edit(model, r, method=method, layer=LAYER, progress=False) for r in STREAM]
    assert all(says_target(model, r) for r in STREAM)
    if method == "grace":
        for p in ELSEWHERE:                                   # no key near: bit for bit as before
            assert torch.equal(model.next_token_logits([p]), before[p])
    edits[1].undo()                                           # its entry / neurons go; the later one keeps working
    assert torch.equal(model.next_token_logits([STREAM[1].text]), before[STREAM[1].text])
    assert says_target(model, STREAM[0]) and says_target(model, STREAM[2])
    assert len(journal(model)) == 2
    journal(model).undo_all()
    assert all(torch.equal(model.next_token_logits([p]), v) for p, v in before.items())


@pytest.mark.parametrize("method", ["grace", "t-patcher"])
def test_bad_input_is_refused_and_changes_nothing(method, tmp_path):
    with pytest.raises(ValueError, match="epsilon"):
        GraceParams(epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        GraceParams(epsilon=-1.0)
    with pytest.raises(ValueError, match="margin"):
        TPatcherParams(margin_2=1.0)
    with pytest.raises(ValueError, match="neurons"):
        TPatcherParams(neurons=0)
    model = tiny_model("llama")
    logits = model.next_token_logits([STREAM[0].text])
    with pytest.raises(ValueError, match="layer"):
        tl.edit(model, STREAM[0], method=method, layer=model.n_layers + 3, progress=False)
    overlapping = tmp_path / "memory.json"
    overlapping.write_text(json.dumps(["An unrelated sentence.", "The Eiffel Tower was built in 1889."]))
    with pytest.raises(ValueError, match="memory set overlaps"):
        tl.edit(model, STREAM[0], method="t-patcher", layer=LAYER, params=TPatcherParams(memory=str(overlapping)),
                progress=False)
    assert len(journal(model)) == 0 and torch.equal(model.next_token_logits([STREAM[0].text]), logits)
    tl.edit(model, STREAM[0], method=method, layer=LAYER, progress=False)
    journal(model).save(tmp_path / "j")
    other = tiny_model("llama", seed=1)                       # another base model
    other_logits = other.next_token_logits([STREAM[0].text])
    with pytest.raises(ValueError, match="hash"):
        Journal.load(tmp_path / "j").apply(other)
    assert len(journal(other)) == 0 and torch.equal(other.next_token_logits([STREAM[0].text]), other_logits)


def test_layer_auto_is_each_papers_choice():
    model = tiny_model("llama", n_layers=8)
    e = tl.edit(model, STREAM[0], method="grace", progress=False)
    assert [c.target for c in e.changes] == ["blocks.6.mlp_out"]     # round(27/31 · 7)
    e.undo()
    e = tl.edit(model, STREAM[0], method="t-patcher", params=TPatcherParams(steps=2), progress=False)
    assert [c.target for c in e.changes] == ["blocks.7.mlp"]         # the last layer, as the paper


def test_the_mlp_call_site_is_for_patches_only():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="for patches"):
        with model.record(["blocks.1.mlp"]):
            pass
