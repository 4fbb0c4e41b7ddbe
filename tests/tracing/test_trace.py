"""Causal tracing: the fast engine equals the naive reference on every family; results behave."""

from __future__ import annotations

import warnings

import pytest
import torch

from tracelab.models.tiny import tiny_model
from tracelab.tracing import GaussianNoise, TokenReplace, TraceResult, trace
from tracelab.tracing.api import prepare
from tracelab.tracing.fast import run_fast
from tracelab.tracing.naive import run_naive
from tracelab.tracing.result import token_classes
from tracelab.tracing.walk import Walker

PROMPT, SUBJECT = "The Eiffel Tower is located in", "Eiffel Tower"


def _noise(model, prompt=PROMPT, subject=SUBJECT, samples=2, std=0.5, seed=1):
    a, b = model.subject_span(prompt, subject)
    return torch.randn(samples, b - a, model.d_model, generator=torch.Generator().manual_seed(seed)) * std


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_walker_reproduces_the_model(tiny):
    """Layer by layer, and resumed from a key/value prefix, the walk gives the model's logits."""
    ids = tiny.tokenize(PROMPT)["input_ids"]
    with torch.no_grad():
        ref = tiny.hf(input_ids=ids).logits[:, -1]
        walker = Walker(tiny, ids)
        h, states, kvs = walker.clean_input, [walker.clean_input], []
        for l in range(tiny.n_layers):
            h, kv = walker.run(l, h, start=0)
            states.append(h), kvs.append(kv)
        torch.testing.assert_close(walker.head(h[:, -1]), ref, atol=1e-5, rtol=1e-5)
        start = 3
        h = states[1][:, start:]  # resume at layer 1 from position 3
        for l in range(1, tiny.n_layers):
            h, _ = walker.run(l, h, start, prefix=tuple(x[..., :start, :] for x in kvs[l]))
        torch.testing.assert_close(walker.head(h[:, -1]), ref, atol=1e-5, rtol=1e-5)


def test_fast_equals_naive_on_every_family(tiny):
    """All cells, all three kinds, same explicit noise: equal within 1e-5 (fp32)."""
    kw = dict(corruption=GaussianNoise(noise=_noise(tiny)), samples=2, window=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = trace(tiny, PROMPT, SUBJECT, engine="fast", **kw)
        naive = trace(tiny, PROMPT, SUBJECT, engine="naive", **kw)
    for kind in ("resid", "mlp", "attn"):
        torch.testing.assert_close(fast.scores[kind], naive.scores[kind], atol=1e-5, rtol=0)
    assert fast.p_clean != pytest.approx(fast.p_corrupted, abs=1e-6)  # the corruption does something
    # restoring the last block output at the last token gives back the clean run
    torch.testing.assert_close(fast.scores["resid"][:, -1, -1], torch.full((2,), fast.p_clean), atol=1e-5, rtol=0)


def test_pre_subject_cells_are_exactly_zero_effect(llama):
    r = trace(llama, PROMPT, SUBJECT, corruption=GaussianNoise(noise=_noise(llama)), samples=2, progress=False)
    a, _ = r.span
    assert a > 0
    for kind in r.kinds:
        assert torch.equal(r.effect(kind)[:, :a], torch.zeros(r.n_layers, a))


@pytest.mark.parametrize("metric", ["log_prob", "logit_diff"])
def test_metrics_and_chunking_agree(llama, metric):
    kw = dict(corruption=GaussianNoise(noise=_noise(llama)), samples=2, window=2, metric=metric, progress=False)
    fast = trace(llama, PROMPT, SUBJECT, engine="fast", max_batch_tokens=7, **kw)  # many small chunks
    naive = trace(llama, PROMPT, SUBJECT, engine="naive", **kw)
    for kind in fast.kinds:
        torch.testing.assert_close(fast.scores[kind], naive.scores[kind], atol=1e-5, rtol=0)


def test_memory_budget_in_bytes(llama):
    """A byte budget sets the batch size through the per-row-position estimate; smaller budgets
    mean more, smaller batches and the same scores."""
    from tracelab.tracing.budget import batch_tokens, bytes_per_row_position

    n = len(llama.tokens(PROMPT))
    per = bytes_per_row_position(llama, n, torch.float32)
    assert per > 4 * (5 * llama.d_model + 2 * llama.d_mlp)
    assert batch_tokens(llama, n, torch.float32, max_batch_bytes=per * 100) == 100
    assert batch_tokens(llama, n, torch.bfloat16, max_batch_bytes=per * 100) > 100  # 2-byte activations
    kw = dict(corruption=GaussianNoise(noise=_noise(llama)), samples=2, window=2, progress=False)
    small = trace(llama, PROMPT, SUBJECT, max_batch_bytes=per * n, **kw)  # one row per batch
    whole = trace(llama, PROMPT, SUBJECT, **kw)
    for kind in whole.kinds:
        torch.testing.assert_close(small.scores[kind], whole.scores[kind], atol=1e-6, rtol=0)


def test_token_replace_matches_naive(llama):
    kw = dict(corruption=TokenReplace("The Space Needle is located in"), samples=5, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = trace(llama, PROMPT, SUBJECT, engine="fast", **kw)
        naive = trace(llama, PROMPT, SUBJECT, engine="naive", **kw)
    assert fast.scores["mlp"].shape[0] == 1  # deterministic: one corrupted run
    for kind in fast.kinds:
        torch.testing.assert_close(fast.scores[kind], naive.scores[kind], atol=1e-5, rtol=0)


def test_bf16_autocast_runs_close_to_fp32(llama):
    kw = dict(corruption=GaussianNoise(noise=_noise(llama)), samples=2, kinds="resid", progress=False)
    full = trace(llama, PROMPT, SUBJECT, **kw)
    half = trace(llama, PROMPT, SUBJECT, dtype="bfloat16", **kw)
    assert half.settings["dtype"] == "bfloat16"
    assert (half.mean("resid") - full.mean("resid")).abs().max() < 0.05


def test_save_load_round_trip(llama, tmp_path):
    r = trace(llama, PROMPT, SUBJECT, corruption=GaussianNoise(std=0.3), samples=3, progress=False)
    r.save(tmp_path / "r")
    back = TraceResult.load(tmp_path / "r")
    assert back.tokens == r.tokens and back.span == r.span and back.settings == r.settings
    for kind in r.kinds:
        assert torch.equal(back.scores[kind], r.scores[kind]) and torch.equal(back.exact[kind], r.exact[kind])
    assert back.peak("mlp") == r.peak("mlp") and back.window("mlp", 2) == r.window("mlp", 2)
    low, high = r.ci("mlp")
    assert (low <= r.effect("mlp") + 1e-7).all() and (r.effect("mlp") <= high + 1e-7).all()


def test_same_seed_same_trace_other_seed_differs(llama):
    kw = dict(corruption=GaussianNoise(std=0.3), samples=2, kinds="resid", progress=False)
    a, b = trace(llama, PROMPT, SUBJECT, seed=3, **kw), trace(llama, PROMPT, SUBJECT, seed=3, **kw)
    c = trace(llama, PROMPT, SUBJECT, seed=4, **kw)
    assert torch.equal(a.scores["resid"], b.scores["resid"]) and not torch.equal(a.scores["resid"], c.scores["resid"])


def test_token_classes():
    assert token_classes(8, (1, 4)) == {
        "first_subject": [1], "middle_subject": [2], "last_subject": [3], "first_subsequent": [4],
        "further": [5, 6], "last": [7]}
    single = token_classes(3, (0, 1))
    assert single["first_subject"] == single["last_subject"] == [0] and single["middle_subject"] == []


def test_peak_finds_a_planted_maximum():
    scores = torch.zeros(2, 6, 5)
    scores[:, 4, 2] = 1.0
    r = TraceResult("p", "s", " t", 1, list("abcde"), (1, 3), "prob", {"mlp": scores}, 1.0, torch.zeros(2))
    assert r.peak("mlp") == 4 and r.peak("mlp", token=0) == 0
    assert r.window("mlp", size=3) == [2, 3, 4]  # the first of the windows holding layer 4
    with pytest.raises(ValueError, match="window size"):
        r.window("mlp", size=7)
    with pytest.raises(ValueError, match="not traced"):
        r.peak("attn")


# ---- bad input: clear error, nothing computed ------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(subject="Colosseum"), "not found"),
    (dict(prompt=""), "empty prompt"),
    (dict(kinds=("resid", "ffn")), "unknown kind"),
    (dict(window=0), "window must be >= 1"),
    (dict(samples=0), "samples must be >= 1"),
    (dict(target="  "), "empty target"),
    (dict(metric="kl"), "unknown metric"),
    (dict(engine="turbo"), "unknown engine"),
    (dict(max_batch_tokens=0), "max_batch_tokens must be a positive int"),
    (dict(max_batch_tokens=64, max_batch_bytes=10**6), "not both"),
    (dict(max_batch_bytes=100), "does not fit one row"),
    (dict(corruption=TokenReplace("The Space Needle")), "same number of tokens"),
    (dict(corruption=GaussianNoise(noise=torch.zeros(3, 1, 64))), "expected"),
])
def test_bad_input(llama, kwargs, match):
    args = dict(prompt=PROMPT, subject=SUBJECT, corruption=GaussianNoise(std=0.1), samples=2, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        trace(llama, args.pop("prompt"), args.pop("subject"), **args)


def test_subject_error_shows_tokens(llama):
    with pytest.raises(ValueError, match="tokens"):
        trace(llama, PROMPT, "Colosseum", corruption=GaussianNoise(std=0.1), progress=False)


def test_wrong_types(llama):
    with pytest.raises(TypeError, match="prompt must be a string, got int 123"):
        trace(llama, 123, SUBJECT, progress=False)
    with pytest.raises(TypeError, match="subject must be a string"):
        trace(llama, PROMPT, None, progress=False)
    with pytest.raises(TypeError, match="samples must be an int"):
        trace(llama, PROMPT, SUBJECT, samples=2.5, progress=False)
    with pytest.raises(TypeError, match="corruption"):
        trace(llama, PROMPT, SUBJECT, corruption="noise", progress=False)


def test_unknown_fact_warns(llama):
    top = llama.predict(PROMPT, k=2)[1][0]  # the second-best token is not what the model predicts
    with pytest.warns(UserWarning, match="does not know"):
        trace(llama, PROMPT, SUBJECT, top, corruption=GaussianNoise(std=0.1), samples=1, kinds="resid", progress=False)


def test_nan_in_corrupted_run_raises_naming_dtype(llama):
    with pytest.raises(FloatingPointError, match="float32"):
        trace(llama, PROMPT, SUBJECT, corruption=GaussianNoise(std=3e38), samples=1, progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(std=-1.0), ValueError, "finite number > 0"),
    (dict(std=0.0), ValueError, "finite number > 0"),
    (dict(std=float("nan")), ValueError, "finite number > 0"),
    (dict(std=float("inf")), ValueError, "finite number > 0"),
    (dict(scale=-3.0), ValueError, "finite number > 0"),
    (dict(std="0.1"), TypeError, "must be a number"),
    (dict(noise=torch.full((1, 1, 4), float("nan"))), ValueError, "NaN or inf"),
])
def test_bad_noise_is_refused_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaussianNoise(**kwargs)


def test_bad_token_replace_is_refused_when_made():
    with pytest.raises(TypeError, match="non-empty string"):
        TokenReplace(42)
    with pytest.raises(TypeError, match="non-empty string"):
        TokenReplace("  ")


@pytest.mark.slow
def test_sampled_cells_on_a_real_model_equal_naive(embedded):
    """Embedded SmolLM2: a few random cells per kind, fast vs naive, same explicit noise."""
    prompt, subject = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
    problem = prepare(embedded, prompt, subject, samples=2, window=10,
                      corruption=GaussianNoise(noise=_noise(embedded, prompt, subject, std=0.1)))
    gen = torch.Generator().manual_seed(0)
    cells = {}
    for kind in problem.kinds:
        mask = torch.zeros(problem.n_layers, problem.n_tokens, dtype=torch.bool)
        mask.view(-1)[torch.randperm(mask.numel(), generator=gen)[:3]] = True
        mask[problem.n_layers // 2, problem.span[1] - 1] = True  # the last subject token, mid-depth
        cells[kind] = mask
    fast, naive = run_fast(problem, cells, progress=False), run_naive(problem, cells, progress=False)
    for kind in problem.kinds:
        torch.testing.assert_close(fast[kind][:, cells[kind]], naive[kind][:, cells[kind]], atol=1e-5, rtol=0)
