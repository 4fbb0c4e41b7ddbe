"""Learned editors (MEND) on a tiny model: training, checkpoints and their provenance, resuming,
data-parallel training, editing with the checkpoint, and the bad inputs refused."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import tracelab as tl
from tracelab.data import shared_data
from tracelab.editing import MendParams, journal
from tracelab.editing.checkpoints import read_checkpoint
from tracelab.evaluation import read_records
from tracelab.models.tiny import tiny_model
from tracelab.training import train_editor

SMALL = dict(limit=40, steps=4, batch_size=4, val=8, val_every=2, progress=False)
PARAMS = MendParams(rank=8, norm_edits=4, lr=1e-3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _zsre():
    return shared_data("zsre-sample.json")


def _tensors(meta):
    return read_checkpoint(meta["path"])[0]


def test_training_writes_a_checkpoint_that_edit_finds_and_undo_reverts(cache):
    model = tiny_model("llama")
    meta = train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)
    assert meta["status"] == "finished" and meta["layers"] == [1, 2, 3] and meta["step"] == 4
    assert meta["weights"] and meta["data"]["sha256"] and meta["data"]["limit"] == 40
    assert meta["params"]["rank"] == 8 and meta["training"]["seed"] == 0
    assert [h["step"] for h in meta["history"]] == [2, 4] and {"reliability", "locality"} <= set(meta["history"][0])
    again = train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)           # the same settings: as saved
    assert again["created"] == meta["created"]
    request = read_records(_zsre())[600].request
    before = model.next_token_logits([request.text])
    e = tl.edit(model, request, method="mend", progress=False)
    assert [c.name for c in e.changes] == [f"model.layers.{l}.mlp.down_proj.weight" for l in (1, 2, 3)]
    assert all(c.factors is not None for c in e.changes) and e.hparams["checkpoint"]["weights"] == meta["weights"]
    assert not torch.equal(model.next_token_logits([request.text]), before)
    e.undo()
    assert torch.equal(model.next_token_logits([request.text]), before)


def test_an_interrupted_training_resumes_to_what_an_uninterrupted_one_gives(cache, tmp_path, monkeypatch):
    from tracelab.editing.methods.mend import MEND

    model = tiny_model("llama")
    calls, original = {"n": 0}, MEND.training_loss

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:                                   # during step 4: after step 2's checkpoint
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(MEND, "training_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)
    monkeypatch.setattr(MEND, "training_loss", original)
    (partial,) = cache.rglob("*-partial.json")
    assert json.loads(partial.read_text())["step"] == 2
    with pytest.raises(ValueError, match=r"params.lr: saved 0.001, now 0.002"):
        train_editor("mend", model, _zsre(), params=MendParams(rank=8, norm_edits=4, lr=2e-3), **SMALL)
    resumed = train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)
    assert not list(cache.rglob("*-partial.json"))
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "fresh"))
    whole = train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)
    assert resumed["history"][-1]["score"] == pytest.approx(whole["history"][-1]["score"])
    for k, v in _tensors(whole).items():
        torch.testing.assert_close(_tensors(resumed)[k], v)


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    os.environ["TRACELAB_CACHE"] = os.path.join(tmp, "parallel")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        train_editor("mend", tiny_model("llama"), _zsre(), params=PARAMS, **SMALL)
    finally:
        dist.destroy_process_group()


def test_two_processes_train_the_editor_one_process_trains(cache, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    (path,) = (tmp_path / "parallel").rglob("mend-*.json")
    parallel, meta = read_checkpoint(path.with_suffix(""))
    assert meta["world_size"] == 2
    single = _tensors(train_editor("mend", tiny_model("llama"), _zsre(), params=PARAMS, **SMALL))
    for k, v in single.items():
        torch.testing.assert_close(parallel[k], v, atol=1e-5, rtol=1e-4)


def test_bad_input_is_refused_and_changes_nothing(cache, tmp_path):
    model = tiny_model("llama")
    request = read_records(_zsre())[600].request
    before = model.next_token_logits([request.text])
    with pytest.raises(ValueError, match="tracelab train-editor mend"):           # no checkpoint yet
        tl.edit(model, request, method="mend", progress=False)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"question": "q", "answer": "a"}] * 30))
    with pytest.raises(ValueError, match="unknown.json: unrecognised evaluation record with keys"):
        train_editor("mend", model, unknown, params=PARAMS, **SMALL)
    with pytest.raises(ValueError, match="found 5 usable records .*need at least 12"):
        train_editor("mend", model, _zsre(), params=PARAMS, **{**SMALL, "limit": 5})
    with pytest.raises(ValueError, match="does not learn"):
        train_editor("rome", model, _zsre(), **SMALL)
    meta = train_editor("mend", model, _zsre(), params=PARAMS, **SMALL)
    other = tiny_model("llama", seed=1)                                            # another base model
    with pytest.raises(ValueError, match="another base model"):
        tl.edit(other, request, method="mend", params=MendParams(checkpoint=meta["path"]), progress=False)
    with pytest.raises(ValueError, match=r"at layers \[2, 3\].*another base model .* or layer set"):
        tl.edit(model, request, method="mend", layers=[2, 3], progress=False)
    stem = meta["path"]
    tensors = read_checkpoint(stem)[0]
    tensors["alpha"] = tensors["alpha"] * 2
    from safetensors.torch import save_file
    save_file(tensors, f"{stem}.safetensors")                                      # changed after saving
    with pytest.raises(ValueError, match="changed after it was saved"):
        tl.edit(model, request, method="mend", progress=False)
    assert len(journal(model)) == 0 and torch.equal(model.next_token_logits([request.text]), before)


def test_the_command_line_trains_and_prints_the_checkpoint(cache, tmp_path, capsys):
    from tracelab.cli import main

    tiny_model("llama").save_pretrained(tmp_path / "model")
    code = main(["train-editor", "mend", "--data", str(_zsre()), "--limit", "40", "--steps", "2", "--val", "8",
                 "--val-every", "1", "--batch-size", "4", "--set", "rank=8", "--set", "norm_edits=4",
                 "--model", str(tmp_path / "model")])
    out = capsys.readouterr().out
    assert code == 0 and "mend: 2 steps" in out and str(cache) in out
    assert main(["train-editor", "mend", "--data", str(_zsre()), "--set", "nonsense=1",
                 "--model", str(tmp_path / "model")]) == 2


def test_knowledge_editor_update_is_the_papers_dense_formula():
    """The factored KE update Σ_t (ρ̂_a ⊙ δ_t)(κ_a ⊙ u_t)ᵀ + ρ̂_b κ_bᵀ, times s·σ(η), equals the paper's
    s · σ(η) · (∇W L ⊙ softmax(ρ_a)ᵀκ_a + softmax(ρ_b)ᵀκ_b) with ∇W L from autograd."""
    from tracelab.editing import KEParams
    from tracelab.editing.toolkit.answers import row_nll, target_batch
    from tracelab.editing.methods.ke import KE

    model = tiny_model("llama")
    torch.manual_seed(0)
    ke = KE()
    editor = ke.init_editor(model, [2, 3], KEParams(max_scale=3.0, lstm_dim=8, condition_dim=16, hidden_dim=8), None)
    request = read_records(_zsre())[600].request
    (U, D, alpha), = [ke.edit_factors(model, editor, [2, 3], [request])[3]]
    weight = model.mlp_out_weight(3).param          # nn.Linear: [d_out, d_in]
    ids, mask, spans = target_batch(model, [request])
    weight.requires_grad_(True)
    grad, = torch.autograd.grad(row_nll(model.hf(input_ids=ids, attention_mask=mask).logits, spans).sum(), weight)
    weight.requires_grad_(False)
    rho_a, kappa_a, rho_b, kappa_b, gate = editor.weights[1](editor.encode(model, [request]))
    paper = 3.0 * gate[0] * (grad * (rho_a[0][:, None] @ kappa_a[0][None]) + rho_b[0][:, None] @ kappa_b[0][None])
    torch.testing.assert_close(alpha * D[0].T @ U[0], paper.detach(), atol=1e-5, rtol=1e-4)


def test_the_counterfact_training_split_trains_an_editor(cache):
    """The issue's other command: `train-editor ... --data counterfact-train.json` (EasyEdit's flat
    CounterFact: rephrase and locality prompts give the paraphrase and the locality pair)."""
    meta = train_editor("mend", tiny_model("llama"), shared_data("counterfact-train.json"), params=PARAMS, **SMALL)
    assert meta["status"] == "finished" and meta["data"]["file"] == "counterfact-train.json"
    assert meta["data"]["records"] == 40 and 0 <= meta["history"][-1]["locality"] <= 1
