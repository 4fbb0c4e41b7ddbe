"""Packaging: every subpackage is installed, and `kernels/` is only `tracelab.kernels`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tracelab").rglob("__init__.py")}
    assert on_disk <= listed, f"add to pyproject.toml packages: {sorted(on_disk - listed)}"
    assert config["package-dir"]["tracelab.kernels"] == "kernels"


def test_kernels_is_not_a_top_level_package(tmp_path):
    """Outside the repository, `import kernels` must not find our folder (the name belongs to
    another widely installed package); `tracelab.kernels` must."""
    code = (
        "import importlib.util, tracelab.kernels as k\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(k.__file__); print(spec.origin if spec else None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    ours, top_level = out.stdout.split("\n")[:2]
    assert Path(ours).parent == ROOT / "kernels"
    assert top_level == "None" or not Path(top_level).is_relative_to(ROOT)
