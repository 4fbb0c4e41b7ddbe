"""Subject spans and target tokens, on the tiny tokenizer and the embedded model's tokenizer."""

from __future__ import annotations

import pytest

from tracelab.models.prompts import continuation, subject_span, target_ids
from tracelab.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _text(tok, prompt, span):
    ids = tok(prompt)["input_ids"][span[0] : span[1]]
    return tok.decode(ids)


def test_span_covers_the_subject(tok):
    prompt = "The Eiffel Tower is located in Paris"
    span = subject_span(tok, prompt, "The Eiffel Tower")
    assert span[0] == 0 and _text(tok, prompt, span) == "The Eiffel Tower"
    span = subject_span(tok, prompt, "Eiffel Tower")
    assert _text(tok, prompt, span).strip() == "Eiffel Tower"


def test_leading_space_in_subject_is_ignored(tok):
    prompt = "Where is the Eiffel Tower"
    assert subject_span(tok, prompt, " Eiffel Tower") == subject_span(tok, prompt, "Eiffel Tower")


def test_repeated_subject_last_by_default(tok):
    prompt = "Paris is in France and Paris is big"
    first = subject_span(tok, prompt, "Paris", occurrence=0)
    last = subject_span(tok, prompt, "Paris")
    assert first[0] == 0 and last[0] > first[1]
    assert subject_span(tok, prompt, "Paris", occurrence=1) == last
    with pytest.raises(ValueError, match="occurs 2 time"):
        subject_span(tok, prompt, "Paris", occurrence=2)


def test_subject_absent_shows_tokens(tok):
    with pytest.raises(ValueError, match=r"not found in prompt.*tokens: \["):
        subject_span(tok, "The Eiffel Tower is in", "Colosseum")


@pytest.mark.parametrize("prompt,subject", [("", "x"), ("   ", "x"), ("The Eiffel Tower", ""), ("The Eiffel Tower", "  ")])
def test_empty_inputs(tok, prompt, subject):
    with pytest.raises(ValueError, match="empty"):
        subject_span(tok, prompt, subject)


def test_continuation_spacing():
    assert continuation("located in", "Paris") == " Paris"
    assert continuation("located in", " Paris") == " Paris"
    assert continuation("located in ", "Paris") == "Paris"
    for bad in ["", "   ", None]:
        with pytest.raises(ValueError, match="empty target"):
            continuation("x", bad)


def test_target_ids_continue_the_prompt(tok):
    prompt = "The Eiffel Tower is located in"
    ids = target_ids(tok, prompt, "Paris")
    assert tok.decode(ids) == " Paris"
    assert tok(prompt + " Paris")["input_ids"][-len(ids):] == ids
    multi = target_ids(tok, prompt, "Canberra and Sydney")
    assert len(multi) > 1 and tok.decode(multi) == " Canberra and Sydney"


def test_bos_is_never_part_of_the_subject(embedded):
    """The embedded tokenizer; spans index `tokenizer(prompt)` positions, BOS or not."""
    prompt = "The Eiffel Tower is located in the city of"
    start, end = embedded.subject_span(prompt, "The Eiffel Tower")
    assert "".join(embedded.tokens(prompt)[start:end]) == "The Eiffel Tower"
    assert embedded.tokenizer.decode(embedded.target_ids(prompt, "Paris")) == " Paris"
