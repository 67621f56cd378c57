"""Perplexity of a causal LM on the first ``tokens`` tokens of a text (one window, no stride)."""

from __future__ import annotations

import math

import torch

from ..errors import QAPrunerError


@torch.no_grad()
def perplexity(model, tokenizer, text: str, tokens: int = 1024) -> float:
    """``exp(mean NLL)`` of tokens 2..T given their prefix, over the first ``tokens`` tokens of ``text``
    (tokenized with the tokenizer's defaults, so a BOS token is included when the tokenizer adds one).
    The model sees the whole window at once; ``tokens`` must fit its context."""
    if tokens < 2:
        raise QAPrunerError(f"Perplexity needs at least 2 tokens, not {tokens}.")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :tokens]
    if ids.shape[1] < tokens:
        raise QAPrunerError(f"The text has only {ids.shape[1]} tokens; ask for at most that many (--tokens).")
    model.eval()
    logits = model(input_ids=ids, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="mean")
    return math.exp(nll.item())
