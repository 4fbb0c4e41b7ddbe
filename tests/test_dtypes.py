"""Where bfloat16 is fast: "auto" and `bf16=True` autocast only on a device that multiplies bf16
natively, and run float32 elsewhere (an AVX2 CPU emulates bf16 ~110× slower than float32)."""

from __future__ import annotations

import pytest
import torch

from tracelab import dtypes
from tracelab.editing.toolkit.compute import training_mode, uses_bf16
from tracelab.models.tiny import tiny_model
from tracelab.tracing import GaussianNoise, trace
from tracelab.tracing.api import resolve_dtype


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.partition(":")[2].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        pytest.skip("no /proc/cpuinfo to check torch's CPU checks against")


def test_fast_bf16_on_this_cpu_matches_its_instruction_flags():
    flags = cpu_flags()
    assert dtypes.fast_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert dtypes.fast_bf16(torch.device("meta")) is False  # not a device we know to be fast


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def host(request, monkeypatch):
    """Both kinds of host, whichever this one is."""
    monkeypatch.setattr(dtypes, "fast_bf16", lambda device: request.param)
    return request.param


def test_auto_is_bf16_only_for_a_float32_model_where_native(host):
    model = tiny_model("llama")
    assert dtypes.auto_dtype(model) == (torch.bfloat16 if host else None)
    assert resolve_dtype(model, "auto") == dtypes.auto_dtype(model)
    assert resolve_dtype(model, "bfloat16") == torch.bfloat16  # asked for by name: always given
    model.hf.to(torch.bfloat16)
    assert dtypes.auto_dtype(model) is None  # a bf16 model computes in its own dtype anyway


def test_an_optimisation_asking_for_bf16_gets_it_only_where_native(host):
    model = tiny_model("llama")
    assert uses_bf16(model, True) == host and uses_bf16(model, False) is False
    with training_mode(model, bf16=True):
        assert torch.is_autocast_enabled("cpu") == host
    with training_mode(model, bf16=False):
        assert not torch.is_autocast_enabled("cpu")


def test_a_trace_with_auto_records_the_dtype_it_ran_in(host):
    model = tiny_model("llama")
    r = trace(model, "The Eiffel Tower is in", "The Eiffel Tower", kinds="resid", samples=1,
              corruption=GaussianNoise(std=0.3), dtype="auto", progress=False)
    assert r.settings["dtype"] == ("bfloat16" if host else "float32")
