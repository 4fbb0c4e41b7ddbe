"""Steering on tiny random models: vectors, pairs, hooks, directions, sweep (fast)."""

from __future__ import annotations

import json

import pytest
import torch

from tracelab.models.tiny import tiny_model
from tracelab.steering import (
    CONTRAST_SETS, BehaviourMetric, Pair, SteeringVector, SweepResult, actadd, activations, as_pairs, caa,
    choose_layer, contrast_set, generate, load_pairs, pairs_from, reading_accuracy, repe, split, steer, sweep,
)

PAIRS = [
    ("The Eiffel Tower is in Paris.", "The Eiffel Tower is in Rome."),
    ("The capital of Australia is Canberra.", "The capital of Australia is Sydney."),
    ("Michael Jordan plays basketball.", "Michael Jordan plays football."),
    ("Mount Fuji is in Japan.", "Mount Fuji is in Seattle."),
    ("Apple was founded in California.", "Apple was founded in Paris."),
    ("The Colosseum is in Rome.", "The Colosseum is in Japan."),
]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def vec(model, layers=(1,), seed=0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({l: torch.randn(model.d_model, generator=g) for l in layers}, model.name, **kw)


def logits(model, prompts=("The Eiffel Tower is in", "Apple was founded")):
    batch = model.tokenize(list(prompts))
    with torch.no_grad():
        return model.hf(**batch).logits


# ---- SteeringVector -------------------------------------------------------------------------
def test_vector_arithmetic_cosine_projection(llama):
    v, w = vec(llama, (1, 2)), vec(llama, (2, 3), seed=1)
    s = v + w
    assert s.layers == [1, 2, 3]
    torch.testing.assert_close(s.directions[2], v.directions[2] + w.directions[2])
    torch.testing.assert_close(s.directions[3], w.directions[3])          # missing layer counts as 0
    torch.testing.assert_close((v - v).directions[1], torch.zeros(llama.d_model))
    torch.testing.assert_close((2 * v / 4).directions[1], 0.5 * v.directions[1])
    torch.testing.assert_close((-v).directions[2], -v.directions[2])
    assert v.cosine(3.0 * v) == pytest.approx({1: 1.0, 2: 1.0}, abs=1e-5)
    assert v.cosine(-v)[1] == pytest.approx(-1.0, abs=1e-5)
    acts = torch.randn(5, 7, llama.d_model)
    proj = v.project(acts, layer=1)
    assert proj.shape == (5, 7)
    torch.testing.assert_close(proj, acts @ (v.directions[1] / v.directions[1].norm()))
    with pytest.raises(ValueError, match="say which"):
        v.project(acts)
    with pytest.raises(ValueError, match="width"):
        v.project(torch.randn(3, 10), layer=1)
    assert v.at(2).layers == [2]
    assert all(abs(n - 1) < 1e-5 for n in v.unit().norm().values())


def test_vector_save_load_roundtrip(llama, tmp_path):
    v = vec(llama, (0, 3), method="caa", position="mean", meta={"source": "x", "n_pairs": 3})
    v.reading_accuracy = {0: 0.5, 3: 1.0}
    stem = v.save(tmp_path / "v")
    w = SteeringVector.load(stem)
    assert (w.method, w.position, w.meta, w.reading_accuracy, w.model_name) == (
        "caa", "mean", v.meta, {0: 0.5, 3: 1.0}, llama.name)
    for l in v.layers:
        assert torch.equal(v.directions[l], w.directions[l])
    assert w.best_layer() == 3


def test_vector_bad_input(llama):
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({}, "m")
    with pytest.raises(ValueError, match="one width"):
        SteeringVector({0: torch.zeros(4), 1: torch.zeros(5)}, "m")
    other = SteeringVector({1: torch.zeros(32)}, "other-model")
    with pytest.raises(ValueError, match="d_model=32"):
        other.check(llama)
    with pytest.raises(ValueError, match="d_model"):
        other + vec(llama)
    with pytest.raises(ValueError, match="out of range"):
        vec(llama, (9,)).check(llama)
    with pytest.raises(ValueError, match="no reading accuracy"):
        vec(llama).best_layer()


# ---- pairs ----------------------------------------------------------------------------------
def test_pairs_forms_and_errors(tmp_path):
    pairs = as_pairs([("a", "b"), Pair("c", "d"), {"prompt": "Q: ", "positive": "yes", "negative": "no"}])
    assert pairs[2] == Pair("Q: yes", "Q: no")
    with pytest.raises(ValueError, match="no contrast pairs"):
        as_pairs([])
    with pytest.raises(ValueError, match="mismatched pair lengths"):
        pairs_from(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="expected \\(positive, negative\\)"):
        as_pairs([("a", "b", "c")])
    with pytest.raises(ValueError, match="non-empty"):
        as_pairs([("a", "")])
    train, held = split(pairs_from(list("abcdefgh"), list("ABCDEFGH")), held_out=0.25)
    assert len(train) == 6 and len(held) == 2 and not set(train) & set(held)

    (tmp_path / "p.json").write_text(json.dumps({"pairs": [{"positive": "x", "negative": "y"}]}))
    assert load_pairs(tmp_path / "p.json") == [Pair("x", "y")]
    (tmp_path / "p.csv").write_text("prompt,positive,negative\nA: ,good,bad\n,nice,awful\n")
    assert load_pairs(tmp_path / "p.csv") == [Pair("A: good", "A: bad"), Pair("nice", "awful")]
    (tmp_path / "bad.csv").write_text("pos,neg\nx,y\n")
    with pytest.raises(ValueError, match="CSV header"):
        load_pairs(tmp_path / "bad.csv")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="no contrast pairs"):
        load_pairs(tmp_path / "empty.json")


@pytest.mark.parametrize("name", CONTRAST_SETS)
def test_builtin_contrast_sets(name):
    s = contrast_set(name)
    assert len(s.pairs) >= 40 and len(set(s.pairs)) == len(s.pairs)
    assert all(p.positive != p.negative for p in s.pairs)
    assert len(s.behaviour.prompts) >= 8
    with pytest.raises(ValueError, match="unknown contrast set"):
        contrast_set("nope")


# ---- applying -------------------------------------------------------------------------------
def test_steer_adds_alpha_v_and_leaves_model_as_before(tiny):
    v = vec(tiny, (1,))
    before = logits(tiny)
    with tiny.record([tiny.resid(1)]) as clean:
        logits(tiny)
    with steer(tiny, v, alpha=2.5):
        with tiny.record([tiny.resid(1)]) as steered:
            during = logits(tiny)
    delta = steered["blocks.1.resid"] - clean["blocks.1.resid"]
    torch.testing.assert_close(delta, (2.5 * v.directions[1]).expand_as(delta), atol=1e-4, rtol=1e-4)
    assert not torch.equal(during, before)
    assert torch.equal(logits(tiny), before)          # hooks gone: exactly the unsteered logits
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny, v, alpha=2.5):
            raise RuntimeError("boom")
    assert torch.equal(logits(tiny), before)


def test_after_prompt_steers_last_real_token_and_generated_ones(llama):
    v = vec(llama, (2,))
    prompts = ["The Eiffel Tower is located in the city of", "Apple was"]
    batch = llama.tokenize(prompts)                                    # right-padded
    last = batch["attention_mask"].sum(1) - 1
    with llama.record([llama.resid(2)]) as clean:
        llama.hf(**batch)
    with steer(llama, v, 1.0, positions="after_prompt"), llama.record([llama.resid(2)]) as steered:
        llama.hf(**batch)
    changed = (steered["blocks.2.resid"] - clean["blocks.2.resid"]).norm(dim=-1) > 1e-5  # [batch, pos]
    for row, l in enumerate(last.tolist()):
        assert not changed[row, :l].any() and changed[row, l]
    # Generation: the steered continuation differs, the unsteered one is reproduced after exit.
    plain = generate(llama, prompts, max_new_tokens=6)
    steered_text = generate(llama, prompts, steer=v, alpha=20.0, max_new_tokens=6)
    assert steered_text != plain and generate(llama, prompts, max_new_tokens=6) == plain


def test_steer_several_vectors_norm_match_and_layers(llama):
    v, w = vec(llama, (1,)), vec(llama, (1, 3), seed=1)
    with llama.record([llama.resid(1)]) as clean:
        logits(llama)
    with steer(llama, [(v, 1.0), (w, -2.0)]), llama.record([llama.resid(1)]) as both:
        logits(llama)
    delta = both["blocks.1.resid"] - clean["blocks.1.resid"]
    torch.testing.assert_close(delta[0, 0], v.directions[1] - 2 * w.directions[1], atol=1e-4, rtol=1e-4)
    with steer(llama, v, 5.0, norm_match=True), llama.record([llama.resid(1)]) as matched:
        logits(llama)
    torch.testing.assert_close(matched["blocks.1.resid"].norm(dim=-1), clean["blocks.1.resid"].norm(dim=-1))
    with steer(llama, v, 1.0, layers=[0, 2]), llama.record([llama.resid(0), llama.resid(2)]) as moved:
        logits(llama)                                                  # a one-layer vector moved to layers 0, 2
    with llama.record([llama.resid(0)]) as clean0:
        logits(llama)
    torch.testing.assert_close(moved["blocks.0.resid"] - clean0["blocks.0.resid"],
                               v.directions[1].expand_as(clean0["blocks.0.resid"]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        with steer(llama, v, 1.0, layers=[7]):
            pass
    with pytest.raises(ValueError, match="not in vector"):
        with steer(llama, w, 1.0, layers=[2]):
            pass
    with pytest.raises(ValueError, match="positions must be"):
        with steer(llama, v, 1.0, positions="before"):
            pass
    with pytest.raises(ValueError, match="d_model"):
        with steer(llama, SteeringVector({1: torch.ones(8)}, "x"), 1.0):
            pass


# ---- directions -----------------------------------------------------------------------------
def test_caa_actadd_are_mean_differences(llama):
    v = caa(llama, PAIRS, layers=[1, 3], progress=False)
    acts = activations(llama, [p for pair in PAIRS for p in pair], [1, 3])   # [12, 2, d]
    expected = (acts[0::2] - acts[1::2]).mean(0)
    torch.testing.assert_close(v.directions[1], expected[0])
    torch.testing.assert_close(v.directions[3], expected[1])
    assert v.method == "caa" and v.meta["n_pairs"] == len(PAIRS)
    a = actadd(llama, *PAIRS[0], layer=2)
    torch.testing.assert_close(a.directions[2], activations(llama, list(PAIRS[0]), [2]).diff(dim=0).neg()[0, 0])
    m = caa(llama, PAIRS, layers=[2], position="mean", progress=False)
    assert m.position == "mean" and m.directions[2].isfinite().all()


def test_repe_sign_and_reading_accuracy(llama):
    r = repe(llama, PAIRS, layers=None, held_out=None, progress=False)
    assert r.layers == list(range(llama.n_layers)) and not r.reading_accuracy
    diff = activations(llama, [p for p, _ in PAIRS], r.layers) - activations(llama, [n for _, n in PAIRS], r.layers)
    for i, l in enumerate(r.layers):
        assert float(r.project(diff[:, i], l).mean()) > 0          # positive side projects higher
    acc = reading_accuracy(llama, r, PAIRS)
    assert set(acc) == set(r.layers) and all(0.0 <= a <= 1.0 for a in acc.values())
    r2 = repe(llama, PAIRS, layers=[1, 2], held_out=PAIRS[:2], progress=False)
    assert set(r2.reading_accuracy) == {1, 2} and choose_layer(r2) == r2.best_layer()


def test_directions_bad_input(llama):
    with pytest.raises(ValueError, match="no contrast pairs"):
        caa(llama, [], layers=[1])
    with pytest.raises(ValueError, match="out of range"):
        caa(llama, PAIRS, layers=[4])
    with pytest.raises(ValueError, match="out of range"):
        repe(llama, PAIRS, layers=[-9])
    with pytest.raises(ValueError, match="position must be"):
        caa(llama, PAIRS, layers=[1], position="first")
    with pytest.raises(ValueError, match="non-empty"):
        actadd(llama, "Love", "", layer=1)
    with pytest.raises(TypeError, match="choose_layer"):
        choose_layer(3)


# ---- sweep ----------------------------------------------------------------------------------
def test_sweep_zero_alpha_is_unsteered(llama, tmp_path):
    metric = BehaviourMetric(["The Eiffel Tower is in", "Apple was founded in"], [" Paris"], [" Rome"])
    v = caa(llama, PAIRS, layers=[2], progress=False)
    r = sweep(llama, v, [-2.0, 0.0, 2.0], metric, fluency_tokens=4, progress=False)
    assert r.behaviour.shape == (3, 2) and r.kl.shape == (3,) and r.fluency.shape == (3,)
    torch.testing.assert_close(r.behaviour[1], metric(llama))
    assert float(r.kl[1]) == pytest.approx(0.0, abs=1e-6) and float(r.kl[0]) > 0 and float(r.kl[2]) > 0
    r2 = SweepResult.load(r.save(tmp_path / "sweep"))
    assert torch.equal(r2.behaviour, r.behaviour) and r2.samples == r.samples
    fig = r.figure()
    assert len(fig.data) == 3
    with pytest.raises(ValueError, match="no alphas"):
        sweep(llama, v, [], metric)
    with pytest.raises(ValueError, match="word lists"):
        BehaviourMetric(["a", "b", "c"], [[" x"], [" y"]], [" z"])


def test_choose_layer_from_a_trace(llama):
    from tracelab.tracing import trace

    r = trace(llama, "The Eiffel Tower is located in the city of", "The Eiffel Tower", kinds=("mlp",), samples=2,
              progress=False)
    layer = choose_layer(r)
    assert layer == r.peak("mlp") and 0 <= layer < llama.n_layers
    v = caa(llama, PAIRS, layers=layer, progress=False)
    assert v.layers == [layer]
