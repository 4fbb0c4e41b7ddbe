"""ROME / MEMIT / AlphaEdit on tiny models: the v*/z engine, the closed forms, and bad input."""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import replace

import pytest
import torch
from transformers.utils import logging as hf_logging

from tracelab.editing import AlphaEditParams, MemitParams, Request, RomeParams, ValueParams, edit, journal, key_stats
from tracelab.editing.methods.alphaedit import alphaedit_solver, cached_projector, null_space_projector
from tracelab.editing.toolkit.keys import context_templates, subject_keys
from tracelab.editing.methods.memit import memit_solver
from tracelab.editing.methods.rome import rome_delta
from tracelab.editing.toolkit.stats import KeyStats
from tracelab.editing.toolkit.values import optimise_values
from tracelab.models.tiny import tiny_model

REQ = Request("The Eiffel Tower", "{} is located in the city of", "Rome")
FAST = ValueParams(steps=6, lr=0.5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))


def _stats(model, layers, tokens=3000, **kw):
    return key_stats(model, layers, tokens=tokens, max_len=64, progress=False, **kw)


def _state(model):
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.hf.state_dict().items())


@contextlib.contextmanager
def _transformers_log():
    """The messages transformers logs inside (its `warning_once` cache cleared first, so a message
    already logged earlier in this process shows again)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.Logger.warning_once.cache_clear()
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    try:
        yield seen
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_fast_engine_matches_reference(family):
    """The fast v*/z engine (cached prefix, replayed lower layers, logits only where scored)
    gives the reference engine's δ, for the MLP output (ROME) and the residual (MEMIT), and passes
    its cache under the name this transformers uses (no deprecation warning)."""
    model = tiny_model(family)
    templates = context_templates(model, 2, 5)
    reqs = [REQ, Request("Lyon", "In {} they speak", "Italian and French")]
    for layer, site in [(1, "mlp_out"), (2, "resid")]:
        with warnings.catch_warnings(), _transformers_log() as log:
            warnings.simplefilter("error", FutureWarning)
            out = [optimise_values(model, reqs, layer, site, templates, ValueParams(steps=2, engine=e, bf16=False),
                                   progress=False) for e in ("fast", "reference")]
        assert not [m for m in log if "deprecated" in m], log
        assert torch.allclose(out[0][1], out[1][1], atol=1e-5)
        assert torch.allclose(out[0][0], out[1][0], atol=1e-4), (out[0][0] - out[1][0]).abs().max()
        assert out[0][0].abs().max() > 1e-2


@pytest.mark.parametrize("bf16", [False, True])
def test_finished_requests_leave_the_batch_without_changing_the_others(bf16):
    """Requests stop at different steps; dropping their rows from the batch (and from the fast
    engine's cached prefix) gives each request the δ it gets when optimised alone."""
    model = tiny_model("llama")
    templates = context_templates(model, 2, 5)
    reqs = [REQ, Request("Lyon", "In {} they speak", "Italian"), Request("Berlin", "{} is the capital of", "Spain")]
    hp = ValueParams(steps=12, lr=0.5, stop_nll=5.9, bf16=bf16)  # random model: NLL 6.5 → 5.3
    together = optimise_values(model, reqs, 2, "resid", templates, hp, progress=False)
    alone = [optimise_values(model, [r], 2, "resid", templates, hp, progress=False) for r in reqs]
    assert len(set(together[2]["steps"])) > 1, together[2]["steps"]  # they did finish at different steps
    assert together[2]["steps"] == [a[2]["steps"][0] for a in alone]
    tol = 2e-2 if bf16 else 1e-4  # bf16 matmuls depend a little on the batch's shape
    for i, a in enumerate(alone):
        assert torch.allclose(together[0][i], a[0][0], atol=tol), (together[0][i] - a[0][0]).abs().max()
        assert together[2]["nll"][i] == pytest.approx(a[2]["nll"][0], abs=tol)


def test_nan_during_optimisation_changes_nothing():
    model = tiny_model("llama")
    before = _state(model)
    stats = _stats(model, 1)
    with pytest.raises(ValueError, match="NaN"):
        edit(model, REQ, layer=1, stats=stats, params=RomeParams(values=ValueParams(lr=float("inf"), steps=3)), progress=False)
    assert _same(model, before) and len(journal(model)) == 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rome_rank_one_along_c_inverse_k(family):
    """ΔW = (v* − Wk − b) uᵀ / (uᵀk) with u = C⁻¹k*: rank one, rows along u; the edit raises P(target)."""
    model = tiny_model(family)
    stats = _stats(model, 1)
    update, info = rome_delta(model, REQ, 1, stats, RomeParams(values=FAST, n_templates=2, verify=False),
                              progress=False)
    templates = context_templates(model, 2, 10)
    k_star = subject_keys(model, 1, [REQ], templates)[0].double()
    u = torch.linalg.solve(stats.moment.double(), k_star)
    assert torch.linalg.matrix_rank(update.double(), rtol=1e-6) == 1
    row = update.double()[update.norm(dim=1).argmax()]
    assert abs(torch.nn.functional.cosine_similarity(row, u, dim=0)) > 0.999
    if family == "gpt2":
        return  # the random tiny GPT-2 barely reads its layer-1 MLP at this token; efficacy is tested on llama
    before = model.target_log_prob(REQ.text, REQ.target)
    e = edit(model, REQ, layer=1, stats=stats, params=RomeParams(values=FAST, n_templates=2), progress=False)
    assert model.target_log_prob(REQ.text, REQ.target) > before + 1.0
    assert e.info["norms"][1] > 0 and set(e.info["seconds"]) == {"keys", "values", "solve", "verify"}
    e.undo()


def test_rome_verify_reaches_the_prompt_key_then_reoptimises():
    """A v* too weak to make the edited model say the target (one tiny step): round 2 solves the
    update to reach the plain prompt's key as well as k* (ΔW k_prompt = ΔW k*), round 3 optimises
    v* again with twice the steps; the checks put the weight back bit for bit, verify=False skips them."""
    model = tiny_model("llama")
    stats, before = _stats(model, 1), _state(model)
    weak = ValueParams(steps=1, lr=1e-3)
    update, info = rome_delta(model, REQ, 1, stats, RomeParams(values=weak, n_templates=2), progress=False)
    assert info["rounds"] == 3 and info["steps"] == 2 and info["reaches_prompt_key"]
    assert _same(model, before)
    k_star = subject_keys(model, 1, [REQ], context_templates(model, 2, 10))[0]
    k_prompt = subject_keys(model, 1, [REQ], ["{}"])[0]
    assert torch.allclose(update @ k_prompt, update @ k_star, rtol=1e-3, atol=1e-5)
    _, info = rome_delta(model, REQ, 1, stats, RomeParams(values=weak, n_templates=2, verify=False), progress=False)
    assert info["rounds"] == 1 and info["seconds"]["verify"] == 0.0 and not info["reaches_prompt_key"]


def test_original_rome_keys_along_c_inverse_k_star_normalised_by_the_prompt_key():
    """rrome=False: ΔW = (v* − W k_prompt − b)(C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀk_prompt), so ΔW k_prompt = v* − W k_prompt − b:
    the v* the optimisation found at the plain prompt is what the edited MLP outputs there."""
    model = tiny_model("llama")
    stats = _stats(model, 1)
    hp = RomeParams(values=FAST, n_templates=2, verify=False)
    orig, _ = rome_delta(model, REQ, 1, stats, replace(hp, rrome=False), progress=False)
    k_star = subject_keys(model, 1, [REQ], context_templates(model, 2, 10))[0].double()
    u = torch.linalg.solve(stats.moment.double(), k_star)
    row = orig.double()[orig.norm(dim=1).argmax()]
    assert abs(torch.nn.functional.cosine_similarity(row, u, dim=0)) > 0.999
    delta, v0, _ = optimise_values(model, [REQ], 1, "mlp_out", context_templates(model, 2, 10), FAST, progress=False)
    k_prompt = subject_keys(model, 1, [REQ], ["{}"])[0]
    W = model.mlp_out_weight(1).matrix
    assert torch.allclose(orig @ k_prompt, v0[0] + delta[0] - W @ k_prompt, atol=1e-4)


def test_update_direction_reaches_every_key_with_the_smallest_c_norm():
    """u = C⁻¹K (KᵀC⁻¹K)⁻¹ 1: uᵀk_j = 1 for each key; one key gives ROME's C⁻¹k / (kᵀC⁻¹k); parallel
    keys give None (or a clear error)."""
    from tracelab.editing.methods.rome import _reaching
    torch.manual_seed(0)
    X = torch.randn(500, 16, dtype=torch.float64)
    C, k1, k2 = X.T @ X / 500, torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    u = _reaching(C, [k1, k2], 0)
    assert torch.allclose(torch.stack([u @ k1, u @ k2]), torch.ones(2, dtype=torch.float64))
    Cik = torch.linalg.solve(C, k1)
    assert torch.allclose(_reaching(C, [k1], 0), Cik / (k1 @ Cik))
    # smallest uᵀCu among directions reaching both: any feasible perturbation costs more
    w = torch.randn(16, dtype=torch.float64)
    w -= torch.stack([k1, k2], 1) @ torch.linalg.lstsq(torch.stack([k1, k2], 1), w[:, None]).solution[:, 0]
    assert (u + 0.1 * w) @ C @ (u + 0.1 * w) > u @ C @ u
    assert _reaching(C, [k1, 2 * k1], 0, missing_ok=True) is None
    with pytest.raises(ValueError, match="nearly"):
        _reaching(C, [torch.zeros(16, dtype=torch.float64)], 0)


def test_memit_and_alphaedit_closed_forms():
    torch.manual_seed(0)
    d, n, dm = 16, 3, 8
    X = torch.randn(200, d)
    stats = {0: KeyStats(0, (X.T @ X / 200).float(), 200, {})}
    K, R = torch.randn(d, n, dtype=torch.float64), torch.randn(dm, n, dtype=torch.float64)
    dW = memit_solver(stats, 10.0)(0, K, R)                            # ΔW (λC + KKᵀ) = R Kᵀ
    assert torch.allclose(dW @ (10.0 * stats[0].moment.double() + K @ K.T), R @ K.T, atol=1e-8)
    C = torch.diag(torch.tensor([1.0] * 10 + [1e-6] * 6))
    P, rank = null_space_projector(C, threshold=1e-2)
    assert rank == 6
    assert null_space_projector(C, null_energy=1e-4)[1] == 6  # 6e-6 of the trace 10
    assert null_space_projector(C, null_energy=0.15)[1] == 7  # + one unit direction: 1.000006 / 10 ≤ 0.15
    with pytest.raises(ValueError, match="exactly one"):
        null_space_projector(C, 0.1, 1e-2)
    ranks = {}
    dW = alphaedit_solver({0: KeyStats(0, C, 1, {})}, {0: torch.randn(2, d)}, None, 1e-2, 1.0, ranks)(0, K, R)
    assert torch.allclose(dW @ (torch.eye(d, dtype=torch.float64) - P), torch.zeros(dm, d, dtype=torch.float64),
                          atol=1e-10)                                   # preserved directions untouched
    assert ranks == {0: 6}


def test_alphaedit_projectors_are_computed_once_per_statistics_read_anew():
    C = torch.diag(torch.tensor([1.0] * 10 + [1e-6] * 6))
    first = cached_projector(KeyStats(0, C.clone(), 1, {"corpus": "x"}), None, 1e-2)
    again = cached_projector(KeyStats(0, C.clone(), 1, {"corpus": "x"}), None, 1e-2)  # as tl.edit reads them per edit
    assert again[0] is first[0] and torch.equal(first[0], null_space_projector(C, threshold=1e-2)[0])
    other = cached_projector(KeyStats(0, C * 2, 1, {"corpus": "x"}), None, 1e-2)  # other statistics: computed
    assert other[0] is not first[0]
    assert cached_projector(KeyStats(0, C.clone(), 1, {"corpus": "x"}), 0.15, None)[1] == 7  # another rule


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_alphaedit_edit_and_undo(method):
    model = tiny_model("llama")
    before = _state(model)
    reqs = [REQ, Request("Michael Jordan", "{} plays the sport of", "football"),
            Request("Apple", "{} was founded by", "Bill Gates")]
    stats = _stats(model, [1, 2])
    lp0 = [model.target_log_prob(r.text, r.target) for r in reqs]
    cls = MemitParams if method == "memit" else AlphaEditParams
    hp = cls(values=ValueParams(steps=8, clamp_norm=4.0), n_templates=2, mom2_weight=100.0)
    if method == "alphaedit":
        hp.null_energy = 0.5
    e = edit(model, reqs, method=method, layers=[1, 2], stats=stats, params=hp, progress=False)
    lp1 = [model.target_log_prob(r.text, r.target) for r in reqs]
    assert sum(lp1) > sum(lp0) + 1.0, (lp0, lp1)
    keys = {c.layer: c.state["keys"] for c in e.changes}  # each layer's change keeps its keys
    assert e.layers == [1, 2] and set(keys) == {1, 2} and keys[1].shape == (3, model.d_mlp)
    assert journal(model).state(method, "keys")[1].shape == (3, model.d_mlp)
    e.undo()
    assert _same(model, before)


def test_bad_inputs_change_nothing():
    model = tiny_model("gpt2")
    before = _state(model)
    stats = _stats(model, 1)
    kw = dict(layer=1, stats=stats, progress=False)
    with pytest.raises(ValueError, match="not found"):
        edit(model, {"prompt": "Paris is nice", "subject": "Lyon", "target_new": "Italy"}, **kw)
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        edit(model, subject="Lyon", prompt="Lyon is in", target="Italy", **kw)
    with pytest.raises(ValueError, match="empty target"):
        edit(model, subject="Lyon", prompt="{} is in", target=" ", **kw)
    with pytest.raises(ValueError, match="out of range"):
        edit(model, REQ, layer=99, stats=stats, progress=False)
    with pytest.raises(ValueError, match="conflicting"):
        edit(model, [REQ, Request("The Eiffel Tower", "{} is in", "Berlin")], method="memit", layers=[1],
             stats=stats, progress=False)
    with pytest.raises(ValueError, match="rome edits one fact at a time"):
        edit(model, [REQ, Request("Lyon", "{} is in", "Italy")], **kw)
    with pytest.raises(ValueError, match=r"unknown method 'no-such-method': registered methods are \[.*'rome'"):
        edit(model, REQ, method="no-such-method", **kw)
    other = tiny_model("gpt2", seed=1)
    with pytest.raises(ValueError, match="computed on"):
        edit(other, REQ, **kw)  # statistics of a different model
    assert _same(model, before) and len(journal(model)) == 0


def test_singular_stats_are_regularised_with_a_warning():
    model = tiny_model("llama")
    stats = _stats(model, 1, tokens=20, batch_size=1)  # fewer tokens than d_mlp = 128: C is singular
    assert stats.count < model.d_mlp
    with pytest.warns(UserWarning, match="singular"):
        e = edit(model, REQ, layer=1, stats=stats, params=RomeParams(values=FAST, n_templates=2), progress=False)
    assert torch.isfinite(model.mlp_out_weight(1).param).all()
    e.undo()
