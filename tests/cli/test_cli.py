"""The command line: help, predict, demo (on the embedded model)."""

from __future__ import annotations

import subprocess
import sys

from tracelab.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "predict" in out and "demo" in out


def test_predict_prints_paris(embedded, capsys):
    assert main(["predict", "--prompt", "The Eiffel Tower is located in the city of", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "1. ' Paris'" in out


def test_predict_bad_k_is_a_clean_error(embedded, capsys):
    assert main(["predict", "--prompt", "x", "-k", "0"]) == 2
    assert "k must be >= 1" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "tracelab", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "predict" in result.stdout


def test_compare_writes_the_table_and_json(embedded, capsys, tmp_path, shared_data):
    out = tmp_path / "compare.json"
    assert main(["compare", "--records", str(shared_data / "counterfact-edit-sample.json"), "--methods", "grace",
                 "--n", "1", "--no-generation", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grace" in printed and "robustness" in printed and out.is_file()
    assert main(["compare", "--methods", "nope", "--n", "1"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err


def test_edit_under_the_guard_prints_the_health(embedded_clean, capsys):
    assert main(["edit", "--subject", "The Eiffel Tower", "--prompt", "{} is located in the city of",
                 "--target", "Rome", "--method", "ft-l", "--layer", "4", "--guard"]) == 0
    assert "health: held-out perplexity" in capsys.readouterr().out
