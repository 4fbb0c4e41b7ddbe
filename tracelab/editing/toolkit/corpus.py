"""Text corpora for key statistics: an offline default, local files, or a `datasets` corpus.

    >>> c = corpus("wordnet")                      # Debian `wordnet-base` glosses (offline)
    >>> c.id, c.revision                           # provenance for the statistics cache
    >>> next(iter(c.texts()))[:60]
    >>> corpus("notes.txt"), corpus("data.jsonl")  # blank-line paragraphs / {"text": ...} lines
    >>> corpus("hf:wikitext:wikitext-103-raw-v1:train")   # needs a network (and `datasets`)

The default is WordNet 3.0's glosses and usage examples (Princeton WordNet licence: free to
use, copy, modify and distribute with its copyright notice; Debian package `wordnet-base`):
~117k short definitions and examples of real English, in a fixed shuffled order and grouped into
paragraphs. Shuffled, because the files are sorted by topic: the first 100k tokens in file
order are abstract nouns and verbs only, while edits are about people, places and companies
(WordNet's 7.7k named instances: "Paris: the capital and largest city of France...").
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

WORDNET_DIRS = (os.environ.get("WNSEARCHDIR", ""), "/usr/share/wordnet", "/usr/local/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_INSTALL = "apt-get install wordnet-base"


@dataclass(frozen=True)
class Corpus:
    """A deterministic stream of documents: `texts()` yields strings, always in the same order.

    `id` names it and `revision` pins its content (a file hash), both recorded in statistics'
    provenance so statistics of a changed corpus are recomputed.
    """

    id: str
    revision: str
    texts: Callable[[], Iterator[str]]


def _file_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def _wordnet_dir() -> Path:
    for d in WORDNET_DIRS:
        if d and all((Path(d) / f).is_file() for f in WORDNET_FILES):
            return Path(d)
    raise FileNotFoundError(
        f"the default statistics corpus (WordNet glosses) is not installed: run `{WORDNET_INSTALL}` "
        "(Debian/Ubuntu), set WNSEARCHDIR to a WordNet 3.0 dict/ folder, or pass corpus='file.txt'"
    )


def _wordnet_texts(directory: Path, per_paragraph: int = 8, seed: int = 0) -> Iterator[str]:
    """Glosses as sentences ("Dog: a domesticated carnivore ...; "the dog barked all night"."),
    every synset of the four parts of speech in one fixed shuffled order (`seed`),
    `per_paragraph` per document."""
    glosses = []
    for name in WORDNET_FILES:
        with open(directory / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.rstrip().split(" | ", 1)
                word = head.split()[4].replace("_", " ")
                glosses.append(f"{word[:1].upper()}{word[1:]}: {gloss.strip()}.")
    random.Random(seed).shuffle(glosses)
    for i in range(0, len(glosses), per_paragraph):
        yield " ".join(glosses[i:i + per_paragraph])


def _file_texts(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise ValueError(f"{path}:{i + 1}: expected a JSON object with a 'text' string, got {line[:80]!r}")
                    yield record["text"]
        return
    for paragraph in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        if paragraph.strip():
            yield paragraph.strip()


def _datasets_corpus(spec: str) -> Corpus:
    parts = spec[3:].split(":")
    name, config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train"
    try:
        import datasets
    except ImportError as e:
        raise ModuleNotFoundError(f"corpus {spec!r} needs the `datasets` package: pip install datasets") from e
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    revision = getattr(ds.info, "version", None) or "latest"

    def texts() -> Iterator[str]:
        for row in datasets.load_dataset(name, config, split=split, streaming=True):
            if row.get("text", "").strip():
                yield row["text"]

    return Corpus(f"hf:{name}:{config or ''}:{split}", str(revision), texts)


def corpus(spec: str | Corpus = "wordnet") -> Corpus:
    """The corpus named by `spec`: "wordnet" (default, offline), a `.txt` file (paragraphs
    separated by blank lines), a `.jsonl` file (one {"text": ...} per line), or
    "hf:NAME[:CONFIG[:SPLIT]]" for a `datasets` corpus (network). See the module docstring."""
    if isinstance(spec, Corpus):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"corpus must be 'wordnet', a file path or 'hf:NAME[:CONFIG[:SPLIT]]', got {spec!r}")
    if spec == "wordnet":
        d = _wordnet_dir()
        return Corpus("wordnet-3.0-glosses-shuffled", _file_hash([d / f for f in WORDNET_FILES]), lambda: _wordnet_texts(d))
    if spec.startswith("hf:"):
        return _datasets_corpus(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus {spec!r} is not 'wordnet', 'hf:...' or an existing .txt/.jsonl file")
    return Corpus(f"file:{path.name}", _file_hash([path]), lambda: _file_texts(path))
