"""Prompt helpers: where a subject's tokens are, and which tokens a target is.

    >>> subject_span(tok, "The Eiffel Tower is located in", "The Eiffel Tower")
    (0, 4)                                         # tokens [0, 4) are the subject
    >>> target_ids(tok, "The Eiffel Tower is located in the city of", "Paris")
    [7342]                                         # " Paris": a space is added, see below
"""

from __future__ import annotations

import re


def _tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


def subject_span(tokenizer, prompt: str, subject: str, occurrence: int = -1) -> tuple[int, int]:
    """Token span `[start, end)` of `subject` in `prompt` (as `tokenizer(prompt)` numbers them).

    `occurrence` picks among repeated occurrences (Python indexing: -1, the default, is the
    last, 0 the first). A token counts as part of the subject if it covers any non-space
    character of it, so a subject that starts or ends inside a token takes the whole token.
    Special tokens (BOS) are never part of it. ValueError, showing the prompt's tokens, when the
    subject does not occur.
    """
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: give the text the model should continue")
    if not subject or not subject.strip():
        raise ValueError(f"empty subject for prompt {prompt!r}: give the subject's text")
    starts = [m.start() for m in re.finditer(re.escape(subject), prompt)]
    if not starts:
        raise ValueError(
            f"subject {subject!r} not found in prompt {prompt!r} (tokens: "
            f"{_tokens(tokenizer, prompt)}); the subject must appear in the prompt verbatim"
        )
    try:
        char_start = starts[occurrence]
    except IndexError:
        raise ValueError(
            f"occurrence={occurrence} but subject {subject!r} occurs {len(starts)} time(s) in "
            f"{prompt!r}; use 0..{len(starts) - 1} or -1 for the last"
        ) from None
    # Skip the subject's own leading/trailing spaces so " Paris" maps like "Paris".
    stripped = subject.strip()
    char_start += subject.index(stripped)
    char_end = char_start + len(stripped)

    encoding = tokenizer(prompt, return_offsets_mapping=True)
    covering = [
        i
        for i, (a, b) in enumerate(encoding["offset_mapping"])
        if b > a and a < char_end and b > char_start and prompt[max(a, char_start) : min(b, char_end)].strip()
    ]
    if not covering:  # defensive: offsets that skip the subject entirely
        raise ValueError(
            f"no token of prompt {prompt!r} covers subject {subject!r} (tokens: "
            f"{_tokens(tokenizer, prompt)})"
        )
    return covering[0], covering[-1] + 1


def continuation(prompt: str, target: str) -> str:
    """The target as text that continues the prompt: a space is put in front of `target` unless
    the prompt ends with, or the target starts with, whitespace ("Paris" → " Paris")."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"empty target {target!r}: give the answer text, e.g. 'Paris'")
    if prompt[-1:].isspace() or target[:1].isspace():
        return target
    return " " + target


def target_ids(tokenizer, prompt: str, target: str) -> list[int]:
    """Token ids of `target` as the model would produce them after `prompt` (all of them; the
    first one is what next-token metrics use). Tokenizes prompt+target and keeps what follows
    the prompt's tokens; falls back to tokenizing the target alone if the prompt's tokens change."""
    text = continuation(prompt, target)
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + text)["input_ids"]
    eos = tokenizer.eos_token_id
    if full_ids[-1:] == [eos] and prompt_ids[-1:] == [eos]:  # tokenizers that append EOS
        prompt_ids, full_ids = prompt_ids[:-1], full_ids[:-1]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return full_ids[len(prompt_ids) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]
