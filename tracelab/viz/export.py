"""Export plotly figures: `.pdf/.svg/.png` through kaleido (headless Chromium), `.html` self-contained.

    >>> save_figure(result.figure(), "figures/eiffel.pdf")
    >>> save_figure(fig, "figures/eiffel.html")      # plotly.js embedded: opens offline
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..io import atomic_write

FORMATS = (".pdf", ".svg", ".png", ".html")


def _browser() -> None:
    """Point kaleido at the system Chromium when no Chrome of its own is configured."""
    if "BROWSER_PATH" not in os.environ:
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if found:
            os.environ["BROWSER_PATH"] = found


def save_figure(fig, path: str | os.PathLike, *, scale: float = 3.0) -> Path:
    """Write `fig` to `path` by its suffix (`.pdf`, `.svg`, `.png` at `scale`× pixels, `.html`); returns the path.

        >>> save_figure(fig, "out/trace.png")        # 3× the layout's pixel size: sharp in print

    The file appears complete or not at all (written to a temporary name, then renamed).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot export a figure to {path}: use one of {FORMATS}")
    if suffix == ".html":
        atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))
        return path
    _browser()
    image = fig.to_image(format=suffix[1:], scale=scale if suffix == ".png" else 1)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(image))
    return path
