"""Turning the model's output into an answer: choice likelihood or generate-and-parse."""

from __future__ import annotations

import re

import torch


def choice_first_tokens(tokenizer, choices: tuple[str, ...]) -> list[int] | None:
    """First token id of each candidate, or None when two candidates share a first token."""
    firsts = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices]
    return firsts if len(set(firsts)) == len(firsts) else None


def pick_by_first_token(last_logits: torch.Tensor, firsts: list[int]) -> tuple[int, torch.Tensor]:
    """Index of the candidate whose first token is most likely as the next token (argmax; ties → lower index),
    and the log-probabilities over all candidates."""
    logp = torch.log_softmax(last_logits.float(), -1)[firsts]
    return int(torch.argmax(logp)), logp


ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str, keep: frozenset[str] = frozenset()) -> str:
    """VQA-style normalisation: lower-case; apostrophes dropped ("don't" → "dont"); every other punctuation mark
    (anything not a letter, digit or space, and "_") becomes a space, except a "." between digits ("2.5");
    the articles a, an, the are dropped (those in ``keep`` are not), unless the text is nothing but articles;
    whitespace collapsed. Compare a prediction with an answer only after normalising both."""
    t = text.lower().replace("'", "").replace("\u2019", "")
    t = re.sub(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_", " ", t)
    words = t.split()
    return " ".join([w for w in words if w not in ARTICLES or w in keep] or words)


def _whole(phrase: str) -> str:
    return rf"(?<!\S){re.escape(phrase)}(?!\S)"


def parse_generated(text: str, choices: tuple[str, ...]) -> str:
    """Turn a greedy generation into a predicted answer.

    With ``choices`` (each normalised like the text; articles that are themselves a choice, e.g. the letter
    "A", are kept): the text normalised by ``normalize_answer``, then
      1. the longest choice the text starts with, as whole words ("no there is no rectangle" → "no",
         "B. red" → "B");
      2. else the one choice that occurs in the text as a whole word or phrase, longer choices first so "dark red"
         does not also count as "red" ("the answer is yes" → "yes");
      3. else (none, or two different choices) the normalised text, which equals no choice: scored wrong.
    A matched choice is returned exactly as written in ``choices``.

    Without choices: the first clause, i.e. the text before the first newline or punctuation mark (, ; : ! ?
    or a "." not between digits), skipping empty clauses, normalised; a clause that starts with the word "yes"
    or "no" gives just that word ("No." → "no", "no no no" → "no", "no there is no rectangle" → "no").
    """
    if choices:
        keep = ARTICLES & {normalize_answer(c, ARTICLES) for c in choices}
        t = normalize_answer(text, keep)
        ranked = sorted(((normalize_answer(c, keep), c) for c in choices), key=lambda nc: -len(nc[0]))
        for norm, choice in ranked:
            if norm and (t == norm or t.startswith(norm + " ")):
                return choice
        found, rest = set(), t
        for norm, choice in ranked:
            if norm and re.search(_whole(norm), rest):
                found.add(choice)
                rest = re.sub(_whole(norm), "|", rest)
        return found.pop() if len(found) == 1 else t
    clauses = [normalize_answer(c) for c in re.split(r"[\n,;:!?]|(?!(?<=\d)\.(?=\d))\.", text)]
    t = next((c for c in clauses if c), "")
    first = t.split(" ", 1)[0]
    return first if first in ("yes", "no") else t
