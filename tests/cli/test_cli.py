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
