"""Before/after an edit: top predictions and target probabilities on a few prompts, as rows and bars.

    >>> prompts = {"prompt": "The Eiffel Tower is located in the city of",
    ...            "paraphrase": "Where is the Eiffel Tower? It is in the city of",
    ...            "neighbour": "The Louvre is located in the city of"}
    >>> before = snapshot(model, prompts, ["Paris", "Rome"])
    >>> e = tracelab.edit(model, subject="The Eiffel Tower", prompt="{} is located in the city of", target="Rome")
    >>> after = snapshot(model, prompts, ["Paris", "Rome"]); e.undo()
    >>> comparison_rows(before, after); comparison_metrics(before, after); edit_bars(before, after)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import plotly.graph_objects as go


@dataclass
class Snapshot:
    """What the model says on some labelled prompts at one moment.

    `prompts` label → text; `top` label → `[(token, prob)] * k`; `probs` label → {target: P(target)}
    (all of the target's tokens, see `Model.target_log_prob`).
    """

    prompts: dict[str, str]
    top: dict[str, list[tuple[str, float]]]
    probs: dict[str, dict[str, float]]

    @property
    def targets(self) -> list[str]:
        return list(next(iter(self.probs.values()))) if self.probs else []


def snapshot(model, prompts: Mapping[str, str], targets: Sequence[str], k: int = 3) -> Snapshot:
    """Top-`k` next tokens and P(target) for every labelled prompt.

        >>> s = snapshot(model, {"prompt": "The Eiffel Tower is located in the city of"}, ["Paris", "Rome"])
        >>> s.top["prompt"][0], s.probs["prompt"]["Rome"]     # (' Paris', 0.70), 0.004
    """
    if not prompts:
        raise ValueError("no prompts given: pass {label: prompt text}, e.g. {'prompt': 'The Eiffel Tower is in'}")
    targets = [t.strip() for t in targets]
    if not targets or not all(targets):
        raise ValueError(f"targets must be non-empty answer strings, got {targets!r}")
    top = {label: model.predict(text, k=k) for label, text in prompts.items()}
    probs = {label: {t: math.exp(model.target_log_prob(text, t)) for t in targets} for label, text in prompts.items()}
    return Snapshot(dict(prompts), top, probs)


def _top(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{token.strip() or repr(token)} {p:.2f}" for token, p in pairs)


def comparison_rows(before: Snapshot, after: Snapshot) -> list[dict[str, str]]:
    """One row per prompt: label, text, top predictions before and after.

        >>> comparison_rows(before, after)[0]["top after"]       # 'Rome 0.95, Venice 0.01, San 0.00'
    """
    return [{"prompt": label, "text": text, "top before": _top(before.top[label]), "top after": _top(after.top[label])}
            for label, text in before.prompts.items()]


def comparison_metrics(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Every target × prompt probability, before and after.

        >>> comparison_metrics(before, after)["after"]["P(Rome | paraphrase)"]   # 0.72
    """
    def flat(s: Snapshot) -> dict[str, float]:
        return {f"P({t} | {label})": p for label, row in s.probs.items() for t, p in row.items()}
    return {"before": flat(before), "after": flat(after)}


BAR_COLOURS = {"before": "#9e9e9e", "after": "#238b45"}


def edit_bars(before: Snapshot, after: Snapshot, *, width: int = 520, height: int = 260) -> go.Figure:
    """Grouped bars: P(target) before and after, one panel per target, a group per prompt.

        >>> edit_bars(before, after).show()
    """
    from plotly.subplots import make_subplots

    targets = before.targets
    fig = make_subplots(rows=1, cols=len(targets), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[f"P({t})" for t in targets])
    labels = list(before.prompts)
    for col, target in enumerate(targets, 1):
        for name, snap in (("before", before), ("after", after)):
            values = [snap.probs[label][target] for label in labels]
            fig.add_trace(go.Bar(x=labels, y=values, name=f"{name} edit", marker_color=BAR_COLOURS[name],
                                 text=[f"{v:.2f}" for v in values], textposition="outside", cliponaxis=False,
                                 legendgroup=name, showlegend=col == 1), row=1, col=col)
    fig.update_yaxes(range=[0, 1.12], dtick=0.25, gridcolor="#eee")
    fig.update_layout(barmode="group", width=width, height=height, plot_bgcolor="white", paper_bgcolor="white",
                      bargap=0.25, bargroupgap=0.05, margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.18, yanchor="top"))
    return fig


def related_prompts(prompt: str, subject: str) -> dict[str, str]:
    """The prompt, a paraphrase and a neighbour for checking an edit of (prompt, subject).

        >>> related_prompts("The Eiffel Tower is located in the city of", "The Eiffel Tower")
        {'prompt': ..., 'paraphrase': 'Here is a fact about The Eiffel Tower. The Eiffel Tower is ...',
         'neighbour': 'The Louvre is located in the city of'}

    The paraphrase is the prompt after a neutral context sentence (CounterFact's prefixed
    prompts); the neighbour is a built-in fact with the same template and another subject,
    preferring one with the same answer (it should keep it), left out when there is none.
    """
    from ..data import builtin_facts

    if subject not in prompt:
        raise ValueError(f"subject {subject!r} is not in the prompt {prompt!r}")
    template = prompt.replace(subject, "{}", 1)
    out = {"prompt": prompt, "paraphrase": f"Here is a fact about {subject}. {prompt}"}
    same = [f for f in builtin_facts() if f["template"] == template and f["subject"] != subject]
    answer = next((f["attribute"] for f in builtin_facts() if f["prompt"] == prompt), None)
    same.sort(key=lambda f: (f["attribute"] != answer, -f["prob"]))
    if same:
        out["neighbour"] = same[0]["prompt"]
    return out
