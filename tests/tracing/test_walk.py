"""The fast engine's parts: written-out Llama layers equal the replayed modules, row plans share
work without changing results, and the heap setting keeps large temporaries warm."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tracelab.tracing.llama_layer import LLAMA_LIKE, LlamaLayers
from tracelab.models.tiny import tiny_model
from tracelab.tracing import GaussianNoise
from tracelab.tracing.api import prepare
from tracelab.tracing.fast import FastEngine, plan_rows
from tracelab.tracing.naive import run_naive
from tracelab.tracing.walk import Walker

PROMPT, SUBJECT = "The Eiffel Tower is located in", "Eiffel Tower"


@pytest.mark.parametrize("family", LLAMA_LIKE)
def test_lean_layers_equal_the_replayed_modules(family):
    """Every argument combination the walk uses: a prefix, restores at the first position and at
    every position, and the last layer's last-position-only output."""
    model = tiny_model(family)
    ids = model.tokenize(PROMPT)["input_ids"]
    n, start, rows = ids.shape[1], 3, 4
    lean, replay = Walker(model, ids), Walker(model, ids, lean=False)
    assert lean.lean is not None and replay.lean is None
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for l in range(model.n_layers):
            x = torch.randn(rows, n - start, model.d_model, generator=gen)
            _, kv = replay.run(l, torch.randn(rows, n, model.d_model, generator=gen), 0)
            prefix = tuple(t[..., :start, :] for t in kv)
            picked = torch.tensor([True, False, True, False])
            restores = [None, {"mlp": (picked, torch.randn(model.d_model, generator=gen))},
                        {"attn": (picked, torch.randn(n - start, model.d_model, generator=gen))}]
            for restore in restores:
                for last_only in (False, True):
                    want, want_kv = replay.run(l, x.clone(), start, prefix, restore, last_only)
                    got, got_kv = lean.run(l, x.clone(), start, prefix, restore, last_only)
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                    for g, w in zip(got_kv, want_kv):
                        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        final = torch.randn(rows, model.d_model, generator=gen)
        torch.testing.assert_close(lean.head(final), replay.head(final), atol=1e-5, rtol=1e-5)


def test_lean_layers_only_where_the_layer_is_the_plain_llama_block(monkeypatch):
    import tracelab.tracing.llama_layer as llama_layer

    assert LlamaLayers.build(tiny_model("gpt2"), torch.float32, 8) is None
    assert LlamaLayers.build(tiny_model("gemma"), torch.float32, 8) is None
    mistral = tiny_model("mistral")
    mistral.hf.config.sliding_window = 4  # a window shorter than the prompt: the replay handles it
    assert LlamaLayers.build(mistral, torch.float32, 8) is None
    assert LlamaLayers.build(mistral, torch.float32, 4) is not None
    llama = tiny_model("llama")
    copy = 2 * sum(p.numel() for p in llama.hf.parameters())  # bytes of a bf16 copy
    monkeypatch.setattr(llama_layer, "_free_bytes", lambda device: 3.0 * copy)  # would take > 1/4
    assert LlamaLayers.build(llama, torch.bfloat16, 8) is None
    monkeypatch.setattr(llama_layer, "_free_bytes", lambda device: 5.0 * copy)
    assert LlamaLayers.build(llama, torch.bfloat16, 8) is not None


def test_plan_shares_the_clipped_windows_and_enters_after_the_first_layer():
    model = tiny_model("llama", n_layers=8)
    problem = prepare(model, PROMPT, SUBJECT, samples=2, window=4)
    L, n = problem.n_layers, problem.n_tokens
    cells = {k: torch.ones(L, n, dtype=torch.bool) for k in problem.kinds}
    rows = plan_rows(problem, cells, 3)
    assert bool((rows.join[1:] >= rows.join[:-1]).all())  # sorted by join layer
    mlp = {(int(l), int(s)): i for i, (k, l, s) in enumerate(zip(rows.kind, rows.layer, rows.sample)) if k == 1}
    # windows [0, 2), [0, 3), [0, 4), [1, 5), ...: layer 0 enters at 1, layers 1 and 2 chain on
    assert [int(rows.join[mlp[(l, 0)]]) for l in range(4)] == [1, 2, 3, 2]
    assert int(rows.source[mlp[(0, 0)]]) == -1 and bool(rows.enter[mlp[(0, 0)]])
    assert int(rows.source[mlp[(1, 1)]]) == mlp[(0, 1)] and int(rows.source[mlp[(2, 1)]]) == mlp[(1, 1)]
    assert not bool(rows.enter[mlp[(2, 0)]]) and bool(rows.enter[mlp[(3, 0)]])
    for batch in rows.batches(5):  # whole chains per batch, sources joined before their rows
        chained = batch.source >= 0
        assert bool((batch.join[batch.source[chained]] < batch.join[chained]).all())
        assert len(batch) >= 1
    assert sum(len(b) for b in rows.batches(5)) == len(rows)


@pytest.mark.parametrize("window,layers", [(4, 8), (10, 4), (2, 4), (1, 4)])
def test_shared_rows_give_the_naive_scores(window, layers):
    """Chains (windows clipped at 0, even identical ones), entering rows and tiny batches."""
    model = tiny_model("qwen2", n_layers=layers)
    problem = prepare(model, PROMPT, SUBJECT, samples=2, window=window, corruption=GaussianNoise(std=0.5))
    L, n = problem.n_layers, problem.n_tokens
    cells = {k: torch.rand(L, n, generator=torch.Generator().manual_seed(window)) < 0.6 for k in problem.kinds}
    naive = run_naive(problem, cells, progress=False)
    for size in (16384, 7):
        with torch.no_grad():
            fast = FastEngine(problem).run(cells, progress=False, max_batch_tokens=size)
        for kind in problem.kinds:
            torch.testing.assert_close(fast[kind], naive[kind], atol=1e-5, rtol=0)


_FAULTS = """
import resource, torch
from tracelab.heap import reuse_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        a, b = torch.ones(8 * 2**20), torch.ones(12 * 2**20)
        del a
        c = torch.ones(4 * 2**20)
        del b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
outside = faults()
with reuse_heap() as active:
    faults(), faults()  # the heap grows to the pattern's size
    inside = faults()
print(active, outside, inside)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_reuse_heap_keeps_large_blocks_warm():
    """A layer call's pattern of large temporaries (32, 48 and 16 MiB, written and freed) faults in
    fresh pages every time; inside reuse_heap, once the heap has grown, it reuses them. In a fresh
    process: how many pages a process faults outside depends on what it allocated before."""
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout
    active, outside, inside = out.split()
    assert active == "True" and int(outside) > 3 * 16000 and int(inside) < int(outside) / 10
