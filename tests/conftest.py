"""Shared fixtures: tiny random models of every family, and the embedded real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# The shared data beside the repository (../shared/data), wherever pytest is started from; the
# suites' default data (`tl.evaluate(model, "zsre")`) is read from the same place.
SHARED_DATA = Path(os.environ.get("TRACELAB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
os.environ["TRACELAB_DATA"] = str(SHARED_DATA)

from tracelab.models.tiny import TINY_FAMILIES, tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M in float32 (loaded once per session). Tests that change its
    weights must restore them (edit.undo()); `embedded_clean` checks that they did."""
    from tracelab import load_model

    return load_model()


@pytest.fixture
def embedded_clean(embedded):
    """The embedded model, failing the test if the test leaves its weights changed."""
    before = {k: v.clone() for k, v in embedded.hf.state_dict().items()}
    yield embedded
    after = embedded.hf.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    for k in changed:
        after[k].copy_(before[k])
    assert not changed, f"test left weights changed: {changed[:5]}"


@pytest.fixture(params=TINY_FAMILIES)
def tiny(request):
    """A tiny random model of each supported family (parametrised)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository (or $TRACELAB_DATA), checked to be there."""
    if not (SHARED_DATA / "counterfact-edit-sample.json").is_file():
        raise FileNotFoundError(f"the tests read the shared data at {SHARED_DATA} (../shared/data beside the "
                                "repository, or $TRACELAB_DATA), and it is not there")
    return SHARED_DATA
