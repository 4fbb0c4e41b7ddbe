"""The key-statistics collector and the fast tracing engine give the same results with the Triton
kernels (interpreted) as with the torch paths."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

STATS = """
import torch, sys
from tracelab.editing import key_stats
from tracelab.models.tiny import tiny_model
model = tiny_model("gpt2", d_model=32)
s = key_stats(model, 1, tokens=300, cache=False, progress=False, batch_size=8)
used = "tracelab.kernels.triton_kernels" in sys.modules  # built only at the first Triton call
torch.save({"moment": s.moment, "count": s.count, "triton": torch.tensor(used)}, sys.argv[1])
"""

TRACE = """
import torch, sys, warnings
import tracelab as tl
from tracelab.models.tiny import tiny_model
warnings.simplefilter("ignore")
out = {}
for family in ("llama", "opt"):  # opt: the MLP output patch sees flattened [rows * pos, d] rows
    r = tl.trace(tiny_model(family, d_model=32), "The Eiffel Tower is in", "The Eiffel Tower", samples=2,
                 corruption=tl.GaussianNoise(std=0.5), progress=False, max_batch_tokens=40)
    out.update({f"{family}.{k}": v for k, v in r.scores.items()})
out["triton"] = torch.tensor("tracelab.kernels.triton_kernels" in sys.modules)
torch.save(out, sys.argv[1])
"""


def _run(script, path, **env):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    subprocess.run([sys.executable, "-c", script, str(path)], env=full, check=True, timeout=600)
    return torch.load(path, weights_only=True)


def test_fast_trace_with_interpreted_triton_restore_equals_torch(tmp_path):
    triton = _run(TRACE, tmp_path / "triton.pt", TRITON_INTERPRET="1", TRACELAB_FORCE_TRITON="1")
    plain = _run(TRACE, tmp_path / "torch.pt", TRACELAB_FORCE_TRITON="0")
    assert bool(triton.pop("triton")) and not bool(plain.pop("triton"))  # each path really ran
    for name, scores in plain.items():
        torch.testing.assert_close(triton[name], scores, rtol=1e-5, atol=1e-7, msg=name)


def test_stats_with_interpreted_triton_equal_torch(tmp_path):
    triton = _run(STATS, tmp_path / "triton.pt", TRITON_INTERPRET="1", TRACELAB_FORCE_TRITON="1")
    plain = _run(STATS, tmp_path / "torch.pt", TRACELAB_FORCE_TRITON="0")
    assert bool(triton["triton"]) and not bool(plain["triton"])  # each path really ran
    assert triton["count"] == plain["count"] > 0
    torch.testing.assert_close(triton["moment"], plain["moment"], rtol=1e-5, atol=1e-6)
