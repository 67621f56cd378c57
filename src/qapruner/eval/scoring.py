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


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9/ -]", "", text.strip().lower()).strip()


def parse_generated(text: str, choices: tuple[str, ...]) -> str:
    """Map a generated answer onto a candidate: exact match, then the first candidate the answer starts with
    (e.g. 'B.' → 'B', 'red shape' → 'red'); free-form answers are returned normalised."""
    t = normalise(text)
    if not choices:
        return t
    lookup = {normalise(c): c for c in choices}
    if t in lookup:
        return lookup[t]
    for norm, choice in sorted(lookup.items(), key=lambda kv: -len(kv[0])):
        if t.startswith(norm) and (len(t) == len(norm) or not t[len(norm)].isalnum()):
            return choice
    return t
