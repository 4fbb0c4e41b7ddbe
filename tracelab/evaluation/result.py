"""`EvalResult`: per-case metrics before and after an intervention, their means, and checkpoints.

    >>> res = tl.evaluate(model, "../shared/data/counterfact-edit-sample.json", "rome", limit=20)
    >>> res.summary["post"]["rome.efficacy_score"]       # percent
    >>> print(res.table()); res.save("results/rome.json"); EvalResult.load("results/rome.json")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Iterable

from ..io import UnreadableFile, atomic_write

# Metrics that are shares of cases (0/1 or a fraction per case), shown in percent. Suites add theirs.
PERCENT = {"rome.efficacy_score", "rome.paraphrase_score", "rome.neighborhood_score",
           "easyedit.reliability", "easyedit.generality", "easyedit.locality"}


def summarise(rows: Iterable[dict[str, float | None]], percent: Iterable[str] = ()) -> dict[str, float]:
    """`{metric: mean over the rows that have it}`; shares in `PERCENT` or `percent` × 100."""
    rows = [r for r in rows if r]
    scaled = PERCENT | set(percent)
    out = {}
    for name in dict.fromkeys(k for r in rows for k in r):
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            out[name] = (100.0 if name in scaled else 1.0) * mean(values)
    return out


@dataclass
class EvalResult:
    """Per-case metrics before and after an intervention, and their means.

        >>> res.summary["post"]["rome.efficacy_score"]     # percent
        >>> res.rows[0]["pre"], res.rows[0]["post"]
        >>> res.checkpoints                                # sequential mode: {n_edits: {metric: mean}}

    `rows`: `{"case_id", "request", "pre", "post"}` per case (`post` is absent when nothing was
    applied). `meta`: the model, suite, intervention, mode, timings and `percent` (the metrics
    shown in percent).
    """

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """`{"pre"|"post": {metric: mean}}`; scores and accuracies in percent."""
        out = {}
        for side in ("pre", "post"):
            rows = [r[side] for r in self.rows if r.get(side)]
            if rows:
                out[side] = summarise(rows, self.meta.get("percent", ()))
        return out

    @property
    def checkpoints(self) -> dict[int, dict[str, float]]:
        """Sequential mode: after how many edits → the means over every case edited so far."""
        return {int(n): s for n, s in self.meta.get("checkpoints", {}).items()}

    def table(self) -> str:
        """The summary as a text table (one row per metric, columns before/after, and checkpoints)."""
        s, at = self.summary, self.checkpoints
        names = list(dict.fromkeys(k for side in [*s.values(), *at.values()] for k in side))
        columns = [("before", s.get("pre", {})), ("after", s.get("post", {}))] if not at else \
            [("before", s.get("pre", {})), *((f"after {n}", v) for n, v in at.items())]
        lines = [f"{'metric':<32}" + "".join(f"{c:>12}" for c, _ in columns)]
        for n in names:
            lines.append(f"{n:<32}" + "".join(f"{v[n]:12.2f}" if n in v else f"{'-':>12}" for _, v in columns))
        lines.append(f"({len(self.rows)} cases; scores in %, magnitudes in probability, entropy in bits)")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"meta": self.meta, "summary": self.summary, "rows": self.rows}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["rows"], data["meta"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UnreadableFile(f"{path} is not a saved EvalResult ({type(e).__name__}: {e})") from e
