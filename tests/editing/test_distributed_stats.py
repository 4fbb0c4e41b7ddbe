"""Key statistics under torch.distributed (gloo, 2 CPU processes) equal one process's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tracelab.editing import key_stats
from tracelab.editing.toolkit.stats import KeyStats
from tracelab.models.tiny import tiny_model

LAYERS, TOKENS = [1, 2], 3000


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    os.environ["TRACELAB_CACHE"] = os.path.join(tmp, "cache")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        stats = key_stats(tiny_model("gpt2"), LAYERS, tokens=TOKENS, max_len=64, save_every=3, progress=False)
        for l, s in stats.items():
            s.save(os.path.join(tmp, f"rank{rank}-layer{l}"))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_one_process_statistics(tmp_path, monkeypatch):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "single"))
    model = tiny_model("gpt2")
    single = key_stats(model, LAYERS, tokens=TOKENS, max_len=64, cache=False, progress=False)
    for l in LAYERS:
        ranks = [KeyStats.load(tmp_path / f"rank{r}-layer{l}") for r in (0, 1)]
        assert torch.equal(ranks[0].moment, ranks[1].moment)  # every rank gets the same C
        for s in ranks:
            assert s.count == single[l].count and s.provenance == single[l].provenance
            torch.testing.assert_close(s.moment, single[l].moment, atol=1e-6, rtol=1e-5)
    # the cache rank 0 wrote holds the whole sum: one process reads it instead of recomputing
    monkeypatch.setenv("TRACELAB_CACHE", str(tmp_path / "cache"))
    cached = key_stats(model, LAYERS, tokens=TOKENS, max_len=64, progress=False)
    for l in LAYERS:
        torch.testing.assert_close(cached[l].moment, single[l].moment, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_torchrun_stats_cli(tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m tracelab stats` on a saved tiny model."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    env = dict(os.environ, TRACELAB_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tracelab", "stats", "--model", str(tmp_path / "model"), "--layers", "1",
                          "--tokens", "2000"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 processes" in out.stdout and out.stdout.count("wordnet") == 1  # rank 0 prints, once
    from tracelab import load_model
    from tracelab.io import load_tensors

    (path,) = (tmp_path / "cache").rglob("layer01-float32*.json")
    tensors, meta = load_tensors(path.with_suffix(""))
    single = key_stats(load_model(tmp_path / "model"), 1, tokens=2000, cache=False, progress=False)
    assert meta["count"] == single.count and meta["provenance"] == {k: v for k, v in single.provenance.items()
                                                                    if k != "tokens"}
    torch.testing.assert_close(tensors["sum"] / meta["count"], single.moment, atol=1e-6, rtol=1e-5)
