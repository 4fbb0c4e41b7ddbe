"""Open an HTML page in headless Chromium with no network; return its rendered DOM and console errors.

    >>> page = render_in_chromium(Path("report.html"), tmp_path, screenshot=tmp_path / "shot.png")
    >>> page.dom, page.errors

Errors are caught two ways: a probe script injected at the top of <head> records console.error,
uncaught exceptions and rejected promises into a <pre id="tl-probe"> the dumped DOM carries, and
Chromium's own console log (stderr) is scanned for uncaught errors. Any network request fails
(a dead proxy), so a page that needs the network renders without its plots.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROBE = """<script>
window.__tlErrors = [];
(function () {
  var original = console.error;
  console.error = function () { window.__tlErrors.push(Array.prototype.map.call(arguments, String).join(" ")); original.apply(console, arguments); };
  window.addEventListener("error", function (e) { window.__tlErrors.push("uncaught: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { window.__tlErrors.push("rejection: " + e.reason); });
  window.addEventListener("load", function () { setTimeout(function () {
    var pre = document.createElement("pre"); pre.id = "tl-probe";
    pre.textContent = JSON.stringify(window.__tlErrors); document.body.appendChild(pre);
  }, 1500); });
})();
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    dom: str
    errors: list[str]


def _run(browser: str, url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="tl-chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout)


def render_in_chromium(page: Path, workdir: Path, screenshot: Path | None = None, timeout: float = 120) -> Rendered:
    """Render `page` (a copy with the probe injected) and return the DOM and every error seen."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    text = page.read_text(encoding="utf-8")
    if "<head>" not in text:
        raise ValueError(f"{page} has no <head>")
    probed = workdir / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    url = probed.resolve().as_uri()
    done = _run(browser, url, ["--dump-dom"], timeout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if re.search(r"Uncaught|Error|Failed to load", line)]
    match = re.search(r'<pre id="tl-probe">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        errors.append(f"probe did not report (page never finished loading?); chromium rc={done.returncode}, "
                      f"stderr tail: {done.stderr[-800:]}")
    else:
        import html

        errors += json.loads(html.unescape(match.group(1)))
    if screenshot is not None:
        _run(browser, url, [f"--screenshot={screenshot}", "--window-size=1100,2600", "--hide-scrollbars"], timeout)
    return Rendered(done.stdout, errors)
