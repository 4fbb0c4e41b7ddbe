"""Contrast pairs: the built-in sets and the user's own, from JSON or CSV.

    >>> s = contrast_set("sentiment")              # also "formality", "factual"
    >>> train, held_out = split(s.pairs, held_out=0.25)
    >>> s.behaviour                                # BehaviourMetric for sweeps
    >>> pairs = load_pairs("my_pairs.csv")         # columns positive,negative[,prompt]
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from .metrics import BehaviourMetric

CONTRAST_SETS = ("sentiment", "formality", "factual")


@dataclass(frozen=True)
class Pair:
    """Two texts that differ in the concept to steer: `Pair("I loved it.", "I hated it.")`.

    The positive side is the direction steering with α > 0 moves towards.
    """

    positive: str
    negative: str

    def __post_init__(self) -> None:
        for side in ("positive", "negative"):
            text = getattr(self, side)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"pair {self.positive!r} / {self.negative!r}: the {side} text must be a non-empty string")


def as_pairs(pairs: Any) -> list[Pair]:
    """Normalise pairs given as `Pair`s, `(positive, negative)` tuples or dicts with
    `positive`/`negative` (and an optional `prompt` put in front of both).

        >>> as_pairs([("I loved it.", "I hated it."), {"prompt": "Q: ", "positive": "yes", "negative": "no"}])
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of (positive, negative) pairs, got {type(pairs).__name__}")
    if not pairs:
        raise ValueError("no contrast pairs given: pass at least one (positive, negative) pair")
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, dict):
            if "positive" not in p or "negative" not in p:
                raise ValueError(f"pair {i} is {p!r}: a dict pair needs 'positive' and 'negative' keys")
            prompt = p.get("prompt") or ""
            out.append(Pair(prompt + p["positive"], prompt + p["negative"]))
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            out.append(Pair(*p))
        else:
            raise ValueError(f"pair {i} is {p!r}: expected (positive, negative), a Pair or a dict")
    return out


def pairs_from(positive: Sequence[str], negative: Sequence[str]) -> list[Pair]:
    """Zip two lists into pairs; ValueError when their lengths differ.

        >>> pairs_from(["I loved it.", "Great food."], ["I hated it.", "Awful food."])
    """
    if len(positive) != len(negative):
        raise ValueError(f"mismatched pair lengths: {len(positive)} positive texts but {len(negative)} "
                         f"negative ones; give one negative text per positive text")
    return as_pairs(list(zip(positive, negative)))


def split(pairs: Sequence[Pair], held_out: float = 0.25, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Shuffle (seeded) and split into `(train, held_out)`; both sides get at least one pair."""
    pairs = as_pairs(pairs)
    if len(pairs) < 2 or not 0 < held_out < 1:
        raise ValueError(f"cannot split {len(pairs)} pairs with held_out={held_out}: need >= 2 pairs and 0 < held_out < 1")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n = min(len(order) - 1, max(1, round(held_out * len(order))))
    return order[n:], order[:n]


def load_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a JSON file (a list of pairs, or an object with a `pairs` list) or a CSV file
    with a header naming `positive`, `negative` and optionally `prompt`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"positive", "negative"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV header is {reader.fieldnames}, expected columns positive,negative[,prompt]")
            rows = [{k: v for k, v in row.items() if k in ("prompt", "positive", "negative")} for row in reader]
        return as_pairs(rows)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); give a .json list of pairs or a .csv file") from None
    return as_pairs(data["pairs"] if isinstance(data, dict) and "pairs" in data else data)


@dataclass(frozen=True)
class ContrastSet:
    """A named set of pairs plus the held-out behaviour they should steer (see `contrast_set`)."""

    name: str
    description: str
    pairs: list[Pair]
    behaviour: BehaviourMetric


def contrast_set(name: str) -> ContrastSet:
    """A built-in contrast set: "sentiment", "formality" or "factual" (true vs false statements).

        >>> s = contrast_set("sentiment")
        >>> len(s.pairs), s.pairs[0]
        >>> s.behaviour.prompts[:2]                # held-out prompts scored by log P(pos) - log P(neg)
    """
    if name not in CONTRAST_SETS:
        raise ValueError(f"unknown contrast set {name!r}: built-in sets are {list(CONTRAST_SETS)}; "
                         f"for your own pairs use load_pairs(path)")
    data = json.loads(resources.files("tracelab.data").joinpath("contrast", f"{name}.json").read_text())
    b = data["behaviour"]
    return ContrastSet(name, data["description"], as_pairs(data["pairs"]),
                       BehaviourMetric(b["prompts"], b["positive"], b["negative"], name=b.get("name", name)))
