"""One comparison of editing methods: the same cases, the same scoring, one table.

    >>> cmp = tl.compare(model, "counterfact", ["rome", "memit", "grace"], n=20, layer=4, layers=[2, 3, 4, 5, 6])
    >>> print(cmp.table()); cmp.save("benchmarks/results/compare.json"); cmp.figure()

Every method edits each case (`mode="single"`: edit, score, undo; or "sequential") and is scored
by CounterFact's suite with generation (ROME's efficacy / paraphrase / neighbourhood scores,
fluency as n-gram entropy of generations), the robustness suite (the edit asked through a
long prefix, with a typo, doubting, as a question) and, where the cases carry probes (the
knowledge graph's edits, `records="portability"`, or records about its facts), the portability
suite, in one `tl.evaluate` per method. Columns:

    efficacy, paraphrase, neighbourhood   ROME's scores after the edit (%)
    portability                           share of the kept ripple / multi-hop probes that follow the edit (%)
    fluency                               n-gram entropy of generations after (bits; before: `fluency_before`)
    consistency                           TF-IDF cosine of those generations with text about the new answer
                                          (from the knowledge graph; `evaluation.consistency`)
    robustness                            share of the four rephrasings that still give the new answer (%)
    s/edit, parameters                    median seconds per edit, median numbers changed or added per edit

Layers: the weight editors of one layer (ROME, FT-L, FT-M) edit at `layer`, those that spread an edit
(MEMIT, AlphaEdit) at `layers`; memory, learned, adapter and in-context methods at their own (their paper's) choice.
"auto" traces each case first. A method that cannot run (no trained checkpoint, a mode it does not
support) is listed with the reason, and the others go on. What each method needed and where it came
from (key statistics, a checkpoint) is in `methods[name]["prepared"]`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..editing import registry
from ..io import UnreadableFile, atomic_write
from ..models import Model
from ..models.loading import as_model
from .api import evaluate, read_cases
from .suites import get_suite
from .suites.robustness import WAYS

COLUMNS = ("efficacy", "paraphrase", "neighbourhood", "portability", "fluency", "consistency", "robustness",
           "s/edit", "parameters")
SCORES = {"efficacy": "rome.efficacy_score", "paraphrase": "rome.paraphrase_score",
          "neighbourhood": "rome.neighborhood_score", "portability": "portability", "fluency": "rome.generation_entropy",
          "consistency": "rome.reference_score"}


@dataclass
class Comparison:
    """Per method: its row of `COLUMNS` (`rows`), and what ran (`methods`: settings, prepared, error).

        >>> cmp.rows["rome"]["efficacy"], cmp.methods["mend"].get("error")
    """

    rows: dict[str, dict[str, float | None]]
    methods: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The comparison as a text table (one row per method; '–' where a method did not run)."""
        head = f"{'method':<14}" + "".join(f"{c:>14}" for c in COLUMNS)
        lines = [head]
        for name in self.methods:
            row = self.rows.get(name)
            if row is None:
                lines.append(f"{name:<14}  not run: {self.methods[name].get('error', '')[:90]}")
                continue
            lines.append(f"{name:<14}" + "".join(f"{row[c]:14.4g}" if row.get(c) is not None else f"{'–':>14}"
                                                 for c in COLUMNS))
        base = self.meta.get("unedited", {})
        lines.append("(unedited: " + ", ".join(f"{c} {base[c]:.4g}" for c in COLUMNS if base.get(c) is not None)
                     + f"; {self.meta.get('cases')} cases, mode {self.meta.get('mode')}; scores in %, fluency in bits)")
        return "\n".join(lines)

    def figure(self):
        """A bar chart: one group per column of scores (%), one bar per method."""
        import plotly.graph_objects as go
        from plotly.colors import qualitative

        scores = ("efficacy", "paraphrase", "neighbourhood", "portability", "robustness")
        colours = qualitative.Dark24  # one colour per method, up to 24
        fig = go.Figure([go.Bar(name=name, x=list(scores), y=[row.get(c) for c in scores],
                                marker_color=colours[i % len(colours)])
                         for i, (name, row) in enumerate(self.rows.items())])
        fig.update_layout(barmode="group", template="simple_white", yaxis_title="% of cases", width=900,
                          height=max(420, 120 + 30 * len(self.rows)),  # room for every legend entry
                          title=f"{self.meta.get('model')}: {self.meta.get('cases')} edits per method "
                                f"({self.meta.get('mode')})")
        return fig

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"meta": self.meta, "rows": self.rows, "methods": self.methods}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=str)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["rows"], data["methods"], data["meta"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UnreadableFile(f"{path} is not a saved Comparison ({type(e).__name__}: {e})") from e


def row_of(summary: dict[str, float], edits: list[dict]) -> dict[str, float | None]:
    """A method's row of `COLUMNS` from its evaluation's post summary and per-case edit records."""
    row: dict[str, float | None] = {c: summary.get(m) for c, m in SCORES.items()}
    asked = [summary[f"robust.{w}"] for w in WAYS if w != "plain" and f"robust.{w}" in summary]
    row["robustness"] = statistics.mean(asked) if asked else None
    seconds = [e["seconds"] for e in edits if e.get("seconds") is not None]
    sizes = [e["parameters"] for e in edits if e.get("parameters") is not None]
    row["s/edit"] = statistics.median(seconds) if seconds else None
    row["parameters"] = statistics.median(sizes) if sizes else None
    return row


def edit_kwargs_for(method: str, layer: int | str, layers: Sequence[int] | str) -> dict[str, Any]:
    """Where `method` edits in a comparison (see the module doc)."""
    m = registry.get(method)
    if m.layers == "none" or m.family in ("memory", "meta-learned"):
        return {}
    if m.layers == "one" or m.auto_layers == "peak":  # FT-L/FT-M may take a range, but edit one layer by default
        return {"layer": layer}
    return {"layers": list(layers)} if not isinstance(layers, str) else {"layer": layers}


def compare(model: Model, records: Any = "counterfact", methods: Sequence[str] | None = None, *, n: int = 20,
            mode: str = "single", layer: int | str = "auto", layers: Sequence[int] | str = "auto",
            generation: bool = True, progress: bool = True, **edit_kwargs: Any) -> Comparison:
    """Every method in `methods` (default: all registered) on the first `n` of `records` (a file, a
    list, or a suite's name: its default data), scored the same way; see the module doc.
    `edit_kwargs` go to every method's `tl.edit` (e.g. `stats_tokens`). Returns a `Comparison`."""
    model = as_model(model)
    names = list(methods) if methods is not None else registry.names()
    unknown = [m for m in names if m not in registry.names()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: registered methods are {registry.names()}")
    if mode not in ("single", "sequential"):
        raise ValueError(f"compare runs mode 'single' or 'sequential' (every method can), got {mode!r}")
    suite = get_suite("counterfact+robustness+portability", generation=generation)
    cases, _ = read_cases(records, suite, n, generation)  # every method edits the same cases
    if not any(c.probes for c in cases):  # nothing to probe: no portability column
        suite = get_suite("counterfact+robustness", generation=generation)
    lacking = [c.case_id if c.case_id is not None else i for i, c in enumerate(cases) if c.request.target_true is None]
    if lacking:
        raise ValueError(f"compare reports ROME's efficacy, paraphrase and neighbourhood scores, which weigh the new "
                         f"answer against the true one, and record(s) {lacking[:5]} have no true answer (CounterFact's "
                         "`ground_truth` / `target_true`, zsRE's `answers`)")
    t0 = time.perf_counter()
    scored = [suite.score(model, c) for c in cases]  # the unedited model, once for every method
    rows, ran, unedited = {}, {}, None
    for name in names:
        kwargs = {**edit_kwargs_for(name, layer, layers), **edit_kwargs}
        ran[name] = {"edit_kwargs": {k: v for k, v in kwargs.items() if k != "params"},
                     "family": registry.get(name).family}
        t = time.perf_counter()
        try:
            ran[name]["prepared"] = prepare(model, name, kwargs)
            res = evaluate(model, cases, name, suite=suite, mode=mode, generation=generation,
                           progress=progress, checkpoints=(n,), unedited=scored, **kwargs)
        except (ValueError, TypeError, FileNotFoundError) as e:  # e.g. a learned editor with no checkpoint
            ran[name]["error"] = f"{type(e).__name__}: {e}"
            continue
        edits = [r.get("edit", {}) for r in res.rows]
        post = res.summary.get("post", {})
        rows[name] = row_of(post, edits) | {"fluency_before": res.summary.get("pre", {}).get(SCORES["fluency"])}
        ran[name].update(seconds=time.perf_counter() - t, refused=sum("refused" in e for e in edits), post=post)
        unedited = unedited or row_of(res.summary.get("pre", {}), [])
    given = str(records) if isinstance(records, (str, Path)) else f"{len(cases)} records given"
    meta = {"model": model.name, "records": given, "cases": n, "mode": mode, "suite": suite.name,
            "generation": generation, "unedited": unedited or {}, "seconds": time.perf_counter() - t0}
    return Comparison(rows, ran, meta)


def prepare(model: Model, method: str, kwargs: dict) -> dict[str, Any]:
    """What `method` needs besides the request, made ready before its edits are timed, and where it
    came from: key statistics (read from the cache or computed, with the seconds it took) and a
    trained checkpoint (its path; ValueError naming the training command when there is none)."""
    m, out = registry.get(method), {}
    layers = kwargs.get("layers") or [kwargs.get("layer")]
    if "stats" in m.needs and all(isinstance(l, int) for l in layers):
        from ..editing.toolkit.stats import DEFAULT_TOKENS, key_stats

        t = time.perf_counter()
        stats = key_stats(model, list(layers), corpus=kwargs.get("corpus", "wordnet"),
                          tokens=kwargs.get("stats_tokens", DEFAULT_TOKENS), progress=False)
        stats = stats if isinstance(stats, dict) else {layers[0]: stats}
        out["stats"] = {"layers": list(stats), "tokens": next(iter(stats.values())).count,
                        "corpus": next(iter(stats.values())).provenance.get("corpus"),
                        "seconds": time.perf_counter() - t}
    elif "stats" in m.needs:
        out["stats"] = "computed (or read from the cache) at the layers traced for each case"
    if m.trained:
        from ..editing.checkpoints import find_editor

        _, meta = find_editor(model, m.name, m.default_layers(model, None), None)
        out["checkpoint"] = {k: meta.get(k) for k in ("path", "created", "step", "best", "data")}
    return out
