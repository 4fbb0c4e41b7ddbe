"""Data the project ships: built-in facts (known_1000 shape), checked against the embedded model.

    >>> facts = builtin_facts()
    >>> facts[0]["prompt"], facts[0]["attribute"]
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

DATA_ENV = "TRACELAB_DATA"  # where the research data files are looked for (default ../shared/data)


def shared_data(name: str) -> Path:
    """The research data file `name` (e.g. "counterfact-train.json") in `$TRACELAB_DATA`, default
    `../shared/data`; FileNotFoundError saying where it looked."""
    path = Path(os.environ.get(DATA_ENV, "../shared/data")) / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is read from ${DATA_ENV} (default ../shared/data), but {path} does not "
                                f"exist: set {DATA_ENV} or give the file's path")
    return path


def builtin_facts() -> list[dict]:
    """~100 well-known facts: dicts with `subject, attribute, template, prompt, relation_id`, and
    `prob`, the embedded model's probability of the attribute's first token (it answers each
    correctly with its top-1 token)."""
    return json.loads(resources.files(__name__).joinpath("facts.json").read_text())
