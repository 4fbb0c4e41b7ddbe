"""Data the project ships: built-in facts (known_1000 shape), checked against the embedded model.

    >>> facts = builtin_facts()
    >>> facts[0]["prompt"], facts[0]["attribute"]
"""

from __future__ import annotations

import json
from importlib import resources


def builtin_facts() -> list[dict]:
    """~100 well-known facts: dicts with `subject, attribute, template, prompt, relation_id`, and
    `prob`, the embedded model's probability of the attribute's first token (it answers each
    correctly with its top-1 token)."""
    return json.loads(resources.files(__name__).joinpath("facts.json").read_text())
