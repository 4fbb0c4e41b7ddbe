"""Memory editors (GRACE, T-Patcher, WISE): the codebook's rules, the patch neurons' equation and the
side memory's router, a stream with an undo from its middle, unrelated inputs untouched, bad input
refused with nothing changed."""

from __future__ import annotations

import json

import pytest
import torch

import tracelab as tl
from tracelab.editing import GraceParams, Journal, Request, TPatcherParams, WiseParams, journal
from tracelab.editing.methods.grace import GraceEntry
from tracelab.editing.methods.tpatcher import PatchNeurons
from tracelab.editing.methods.wise import WiseEdit, ties_merge
from tracelab.editing.patches import group
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


def test_patches_at_one_mlp_run_as_one_wider_layer_and_a_patch_in_training_is_read_live():
    torch.manual_seed(0)
    patches = [PatchNeurons(4, n) for n in (1, 2, 3)]
    for p in patches:
        for t in (p.keys, p.bias, p.values):
            t.data.normal_()
    x, y = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    one_by_one = y
    for p in patches:
        one_by_one = p(x, one_by_one)
    cache = {}
    torch.testing.assert_close(PatchNeurons.forward_group(x, y, patches, cache), one_by_one)
    patches[2].keys.requires_grad_(True)                 # in training: its keys move between forwards
    patches[2].keys.data.add_(1.0)
    grouped = PatchNeurons.forward_group(x, y, patches, cache)
    torch.testing.assert_close(grouped, patches[2](x, patches[1](x, patches[0](x, y))))
    grouped.sum().backward()
    assert patches[2].keys.grad is not None and patches[0].keys.grad is None
    patches[2].keys.requires_grad_(False)               # trained: it joins the kept stack
    torch.testing.assert_close(PatchNeurons.forward_group(x, y, patches, cache), grouped.detach())
    assert cache["fixed"] == 3


def _side_memory(delta, act, shard=0, save_freq=1, merge_freq=1):
    """A WISE edit whose ΔW is `delta` (a mask of every entry) and whose in-scope score was `act`."""
    rows, cols = delta.shape
    e = WiseEdit(rows, cols, rows * cols, shard, 1.0, 0, 0.5, save_freq, merge_freq, 1.0, "relu")
    e.values.data.copy_(delta.flatten()), e.act.fill_(act)
    return e


def test_the_router_sends_a_row_to_the_side_memory_only_when_its_score_passes_the_threshold():
    edit = _side_memory(torch.eye(2) * 4, act=8.0)                         # threshold 0.5 · 8 = 4
    k = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],                            # Δ = ‖relu(4k)‖ = 4 at position 0: routed
                      [[0.5, 0.0], [0.0, 0.0]],                            # max Δ 2 < 4: the base W
                      [[0.0, 0.0], [3.0, 0.0]]])                           # 12, but only at a padded position
    v = torch.zeros(3, 2, 2)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    out = WiseEdit.forward_group(k, v, [edit], {"attention_mask": mask})
    assert torch.equal(out[0], v[0] + k[0] @ (torch.eye(2) * 4).T)
    assert torch.equal(out[1], v[1]) and torch.equal(out[2], v[2])
    assert torch.equal(WiseEdit.forward_group(k, v, [edit], {})[2], v[2] + k[2] @ (torch.eye(2) * 4).T)  # no mask: all


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_entries():
    a, b = torch.tensor([1.0, -2.0, 0.1, 3.0]), torch.tensor([1.0, 4.0, -0.1, -1.0])
    # density 0.75 keeps 3 of 4 entries each (drops ±0.1); signs by the sum: +, +, none, +
    assert ties_merge([a, b], 0.75).tolist() == [1.0, 4.0, 0.0, 3.0]


def test_full_shards_are_merged_and_the_merged_memory_takes_their_lowest_threshold():
    one, two, three = (_side_memory(torch.eye(2) * s, act=a, shard=i, save_freq=1, merge_freq=2)
                       for i, (s, a) in enumerate([(1.0, 10.0), (3.0, 6.0), (5.0, 20.0)]))
    memories = WiseEdit.memories([one, two, three])
    assert len(memories) == 2                                              # shards 0 + 1 merged, shard 2 alone
    assert torch.equal(memories[0][0], torch.eye(2) * 2) and memories[0][1] == 3.0   # mean of 1 and 3; 0.5 · 6
    assert torch.equal(memories[1][0], torch.eye(2) * 5) and memories[1][1] == 10.0
    assert len(WiseEdit.memories([one, two])) == 1 and len(WiseEdit.memories([one])) == 1


@pytest.mark.parametrize("method", ["grace", "t-patcher"])
def test_a_stream_of_edits_and_an_undo_from_its_middle(method):
    model = tiny_model("llama")
    before = {p: model.next_token_logits([p]) for p in ELSEWHERE + [r.text for r in STREAM]}
    assert not any(says_target(model, r) for r in STREAM)
    edits = [tl.edit(model, r, method=method, layer=LAYER, progress=False) for r in STREAM]
    assert all(says_target(model, r) for r in STREAM)
    cls = GraceEntry if method == "grace" else PatchNeurons
    assert len(group(model, model.site(edits[0].changes[0].target), cls).members) == 3   # one hook runs them
    if method == "grace":
        for p in ELSEWHERE:                                   # no key near: bit for bit as before
            assert torch.equal(model.next_token_logits([p]), before[p])
    edits[1].undo()                                           # its entry / neurons go; the later one keeps working
    assert torch.equal(model.next_token_logits([STREAM[1].text]), before[STREAM[1].text])
    assert says_target(model, STREAM[0]) and says_target(model, STREAM[2])
    assert len(journal(model)) == 2
    journal(model).undo_all()
    assert all(torch.equal(model.next_token_logits([p]), v) for p, v in before.items())


def test_a_wise_stream_and_an_undo_from_its_middle():
    """Each edit its own shard (save_freq=1): an undo from the middle takes out exactly its memory
    and leaves the model as the other edits alone make it, bit for bit (which prompt the router
    sends where is tested on the embedded model: a tiny random model's memories overlap)."""
    model = tiny_model("llama")
    before = {p: model.next_token_logits([p]) for p in ELSEWHERE + [r.text for r in STREAM]}
    params = WiseParams(save_freq=1, merge_freq=1000, steps=5)
    edits = [tl.edit(model, r, method="wise", layer=LAYER, params=params, progress=False) for r in STREAM]
    members = group(model, model.mlp_out_proj(LAYER), WiseEdit).members
    assert [m.settings["shard"] for m in members] == [0, 1, 2] and len(WiseEdit.memories(members)) == 3
    middle = edits[1].changes[0].module
    edits[1].undo()
    assert middle not in members and len(members) == 2
    without = {p: model.next_token_logits([p]) for p in before}
    journal(model).undo_all()
    assert group(model, model.mlp_out_proj(LAYER), WiseEdit) is None
    assert all(torch.equal(model.next_token_logits([p]), v) for p, v in before.items())
    for e in (edits[0], edits[2]):
        e.changes[0].apply(model)
    assert all(torch.equal(model.next_token_logits([p]), v) for p, v in without.items())
    for e in (edits[2], edits[0]):
        e.changes[0].revert(model)


@pytest.mark.parametrize("method", ["grace", "t-patcher", "wise"])
def test_bad_input_is_refused_and_changes_nothing(method, tmp_path):
    with pytest.raises(ValueError, match="epsilon"):
        GraceParams(epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        GraceParams(epsilon=-1.0)
    with pytest.raises(ValueError, match="margin"):
        TPatcherParams(margin_2=1.0)
    with pytest.raises(ValueError, match="neurons"):
        TPatcherParams(max_neurons=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        WiseParams(mask_ratio=0.0)
    with pytest.raises(ValueError, match="merge_freq"):
        WiseParams(save_freq=3, merge_freq=4)
    with pytest.raises(ValueError, match="margins"):
        WiseParams(margins=(5.0, -1.0, 10.0))
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


def test_t_patcher_adds_a_neuron_per_wrong_target_token_remembers_earlier_edits_and_skips_answered_ones():
    from tracelab.editing.toolkit.answers import target_batch

    model = tiny_model("llama")
    first = Request("The Eiffel Tower", "The city of {}", "Rome and Paris and Lyon")
    ((rows, ids),) = model.target_log_probs([first.text], [first.target])
    wrong = sum(int(a != b) for a, b in zip(rows.argmax(-1).tolist(), ids))
    assert wrong > 3
    e1 = tl.edit(model, first, method="t-patcher", layer=LAYER, params=TPatcherParams(max_neurons=3), progress=False)
    assert e1.info["neurons"] == 3 == e1.changes[0].module.keys.shape[0]           # capped at max_neurons
    e2 = tl.edit(model, STREAM[1], method="t-patcher", layer=LAYER, progress=False)
    _, mask, _ = target_batch(model, [first])
    assert e2.info["memory_states"] == e1.info["memory_states"] + int(mask.sum())  # the paper's update_memory
    assert says_target(model, STREAM[1])
    with pytest.warns(UserWarning, match="already answers"):
        again = tl.edit(model, STREAM[1], method="t-patcher", layer=LAYER, progress=False)
    assert again.changes == []                                                    # no mistake: nothing added


def test_layer_auto_is_each_papers_choice():
    model = tiny_model("llama", n_layers=8)
    e = tl.edit(model, STREAM[0], method="grace", progress=False)
    assert [c.target for c in e.changes] == ["blocks.6.mlp_out"]     # round(27/31 · 7)
    e.undo()
    e = tl.edit(model, STREAM[0], method="t-patcher", params=TPatcherParams(steps=2), progress=False)
    assert [c.target for c in e.changes] == ["blocks.7.mlp"]         # the last layer, as the paper
    e.undo()
    e = tl.edit(model, STREAM[0], method="wise", params=WiseParams(steps=2), progress=False)
    assert [c.target for c in e.changes] == ["blocks.6.mlp_out_proj"]  # EasyEdit's depth, as GRACE


def test_the_mlp_call_site_is_for_patches_only():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="for patches"):
        with model.record(["blocks.1.mlp"]):
            pass


def test_t_patchers_memory_set_is_read_again_when_a_weight_below_it_changes():
    from types import SimpleNamespace

    from tracelab.editing.methods.tpatcher import memory_states

    model = tiny_model("llama")
    ctx = SimpleNamespace(journal=journal(model))
    first = memory_states(model, LAYER, ELSEWHERE, ctx, False)
    assert memory_states(model, LAYER, ELSEWHERE, ctx, False) is first        # cached
    weight = model.layer(LAYER - 1).mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.5)                                                      # written in place, outside the journal
    try:
        assert not torch.equal(memory_states(model, LAYER, ELSEWHERE, ctx, False), first)
    finally:
        with torch.no_grad():
            weight.sub_(0.5)


def test_t_patchers_earlier_edits_are_read_once_and_again_when_a_weight_below_them_changes(monkeypatch):
    from types import SimpleNamespace

    from tracelab.editing.methods import tpatcher
    from tracelab.editing.toolkit.answers import target_batch

    model = tiny_model("llama")
    for r in STREAM[:2]:
        tl.edit(model, r, method="t-patcher", layer=LAYER, progress=False)
    ctx, new = SimpleNamespace(journal=journal(model)), STREAM[2]
    ids, mask, _ = target_batch(model, STREAM[:2])
    fresh = tpatcher.mlp_input(model, LAYER, ids, mask)[mask.bool()]          # every earlier edit's tokens
    first = tpatcher.edited_states(model, LAYER, ctx, new)
    torch.testing.assert_close(first, fresh, atol=1e-5, rtol=0)                # up to the batch's padding
    forwards = []
    monkeypatch.setattr(tpatcher, "mlp_input", lambda *a, **k: forwards.append(1) or fresh)
    assert torch.equal(tpatcher.edited_states(model, LAYER, ctx, new), first) and not forwards  # read once
    monkeypatch.undo()
    weight = model.layer(LAYER - 1).mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.5)                                                      # written in place, outside the journal
    try:
        assert not torch.allclose(tpatcher.edited_states(model, LAYER, ctx, new), first)
    finally:
        with torch.no_grad():
            weight.sub_(0.5)


def test_t_patchers_default_memory_set_leaves_out_the_training_prompts_about_the_edit(shared_data):
    from tracelab.editing.methods.tpatcher import memory_texts

    train = [r["prompt"] for r in json.loads((shared_data / "counterfact-train.json").read_text())]
    subject = next(t.split(" ")[0] for t in train[:200] if t.split(" ")[0].istitle() and len(t.split(" ")[0]) > 4)
    texts = memory_texts(200, [Request(subject, "{} is", "Paris")])
    assert len(texts) == 200 and not any(subject in t for t in texts)
    assert texts[:5] == [t for t in train if subject not in t][:5]
