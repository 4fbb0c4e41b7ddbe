"""Edit requests: "make `subject` + `prompt` continue with `target`".

    >>> r = Request("The Eiffel Tower", "{} is located in the city of", "Rome")
    >>> r.text                                     # the prompt with the subject filled in
    'The Eiffel Tower is located in the city of'
    >>> as_requests([{"subject": "Lyon", "prompt": "{} is in", "target_new": "Italy"}])[0].target
    'Italy'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Request:
    """One fact to write: `prompt.format(subject)` should continue with `target`.

        >>> Request("Lyon", "{} is a city in", "Italy", target_true="France").text
        'Lyon is a city in'

    `prompt` is a template with exactly one "{}" where the subject goes. `target_true` (the
    current answer) is optional, used by evaluation. Construction checks everything and raises
    ValueError/TypeError saying what to fix.
    """

    subject: str
    prompt: str
    target: str
    target_true: str | None = None

    def __post_init__(self) -> None:
        for name in ("subject", "prompt", "target"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"request {name} must be a str, got {type(value).__name__} {value!r}")
        if not self.subject.strip():
            raise ValueError(f"empty subject {self.subject!r}: give the entity to edit, e.g. 'The Eiffel Tower'")
        if not self.target.strip():
            raise ValueError(f"empty target {self.target!r} for subject {self.subject!r}: give the new answer, e.g. 'Rome'")
        if self.prompt.count("{}") != 1:
            hint = (f" (the subject occurs in it: use {self.prompt.replace(self.subject, '{}', 1)!r})"
                    if self.subject in self.prompt else "")
            raise ValueError(
                f"prompt {self.prompt!r} must be a template with exactly one '{{}}' where the subject "
                f"goes, e.g. '{{}} is located in the city of'{hint}"
            )

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_text(cls, prompt: str, subject: str, target: str, target_true: str | None = None) -> Request:
        """A request from a filled-in prompt (EasyEdit style): the last occurrence of `subject`
        becomes the "{}". ValueError (showing both) if the subject is not in the prompt.

            >>> Request.from_text("Lyon is a city in", "Lyon", "Italy").prompt
            '{} is a city in'
        """
        if not isinstance(prompt, str) or not isinstance(subject, str) or not subject.strip():
            raise ValueError(f"prompt and subject must be non-empty strings, got {prompt!r}, {subject!r}")
        if "{}" in prompt:
            return cls(subject, prompt, target, target_true)
        at = prompt.rfind(subject)
        if at < 0:
            raise ValueError(f"subject {subject!r} not found in prompt {prompt!r}; the subject must appear verbatim")
        return cls(subject, prompt[:at] + "{}" + prompt[at + len(subject):], target, target_true)


def _text(value) -> str | None:
    """CounterFact stores targets as {"str": ..., "id": ...}; EasyEdit as plain strings."""
    if isinstance(value, Mapping):
        return value.get("str")
    return value


def as_request(item: Request | Mapping[str, Any]) -> Request:
    """A `Request` from a Request or a dict in any of the usual shapes: tracelab's
    (`subject, prompt, target`), ROME/CounterFact's (`requested_rewrite` with `target_new.str`),
    EasyEdit's flat one (`prompt` filled in, `target_new`, `ground_truth`)."""
    if isinstance(item, Request):
        return item
    if not isinstance(item, Mapping):
        raise TypeError(f"an edit request must be a Request or a dict, got {type(item).__name__} {item!r}")
    rewrite = item.get("requested_rewrite", item)
    if isinstance(rewrite, list):
        rewrite = rewrite[0]
    target = _text(rewrite.get("target", rewrite.get("target_new")))
    true = _text(rewrite.get("target_true", rewrite.get("ground_truth")))
    if isinstance(true, list):
        true = true[0] if true else None
    missing = [k for k, v in (("subject", rewrite.get("subject")), ("prompt", rewrite.get("prompt")),
                              ("target", target)) if v is None]
    if missing:
        raise ValueError(f"edit request {dict(item)!r} lacks {missing}: give subject, prompt ('{{}}' template "
                         f"or text containing the subject) and target (or target_new)")
    return Request.from_text(rewrite["prompt"], rewrite["subject"], target, true)


def as_requests(items: Request | Mapping | Iterable[Request | Mapping]) -> list[Request]:
    """A list of `Request`s from one or many requests/dicts (see `as_request`)."""
    if isinstance(items, (Request, Mapping)):
        items = [items]
    requests = [as_request(i) for i in items]
    if not requests:
        raise ValueError("no edit requests given: pass at least one (subject, prompt, target)")
    return requests


def check_conflicts(requests: list[Request]) -> list[Request]:
    """Drop exact duplicates; ValueError when one subject is given different targets (the keys
    that MEMIT/AlphaEdit write to are the subject's last token, so they would fight)."""
    seen: dict[str, Request] = {}
    unique = []
    for r in requests:
        other = seen.get(r.subject)
        if other is None:
            seen[r.subject] = r
            unique.append(r)
        elif other.target.strip() != r.target.strip():
            raise ValueError(
                f"subject {r.subject!r} is given conflicting targets {other.target!r} and {r.target!r} "
                f"in one call; edit them in separate calls (or drop one)"
            )
        elif other.prompt != r.prompt:
            unique.append(r)
    return unique
