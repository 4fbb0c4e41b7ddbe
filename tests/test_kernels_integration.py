"""The key-statistics collector gives the same C with the Triton kernel (interpreted) as with torch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

SCRIPT = """
import torch, sys
from tracelab.editing import key_stats
from tracelab.models.tiny import tiny_model
model = tiny_model("gpt2", d_model=32)
s = key_stats(model, 1, tokens=300, cache=False, progress=False, batch_size=8)
used = "tracelab.kernels.triton_kernels" in sys.modules  # built only at the first Triton call
torch.save({"moment": s.moment, "count": s.count, "triton": torch.tensor(used)}, sys.argv[1])
"""


def _run(path, **env):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=full, check=True, timeout=600)
    return torch.load(path, weights_only=True)


def test_stats_with_interpreted_triton_equal_torch(tmp_path):
    triton = _run(tmp_path / "triton.pt", TRITON_INTERPRET="1", TRACELAB_FORCE_TRITON="1")
    plain = _run(tmp_path / "torch.pt", TRACELAB_FORCE_TRITON="0")
    assert bool(triton["triton"]) and not bool(plain["triton"])  # each path really ran
    assert triton["count"] == plain["count"] > 0
    torch.testing.assert_close(triton["moment"], plain["moment"], rtol=1e-5, atol=1e-6)
