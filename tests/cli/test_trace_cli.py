"""`tracelab trace` and `tracelab trace-dataset` on the embedded model."""

from __future__ import annotations

import json

import pytest

from tracelab.cli import main
from tracelab.tracing import DatasetTrace, TraceResult


def test_trace_rejects_a_bad_out_suffix(tmp_path, capsys):
    code = main(["trace", "--prompt", "The capital of France is", "--subject", "France", "--out", str(tmp_path / "x.jpg")])
    assert code == 2 and "must end in one of" in capsys.readouterr().err


@pytest.mark.slow
def test_trace_cli_writes_figure_and_result(tmp_path, capsys):
    out = tmp_path / "eiffel.html"
    code = main(["trace", "--prompt", "The Eiffel Tower is located in the city of", "--subject", "The Eiffel Tower",
                 "--out", str(out), "--kinds", "mlp", "--samples", "2", "--compute-dtype", "auto", "--quiet"])
    assert code == 0 and out.is_file()
    result = TraceResult.load(tmp_path / "eiffel")
    assert result.target == " Paris" and result.kinds == ("mlp",)
    assert "peak mlp" in capsys.readouterr().out


@pytest.mark.slow
def test_trace_dataset_cli(tmp_path, embedded):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"prompt": "The Eiffel Tower is located in the city of",
                                  "subject": "The Eiffel Tower", "attribute": "Paris"}]))
    code = main(["trace-dataset", "--facts", str(facts), "--limit", "1", "--out", str(tmp_path / "avg"),
                 "--kinds", "resid", "--samples", "1", "--compute-dtype", "auto", "--quiet"])
    assert code == 0
    assert DatasetTrace.load(tmp_path / "avg" / "average").n_facts == 1
    assert (tmp_path / "avg" / "average.pdf").is_file()
