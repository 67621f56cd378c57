"""Calibration plumbing on a language model's parts: untying the head for rotation, and capturing what the
first decoder layer receives."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QAPrunerError
from ..models.parts import LMParts


def untie_embeddings(parts: LMParts) -> None:
    """Give the head its own weight (a copy) and mark the configs untied, so rotation can change the two
    independently and a later ``tie_weights()`` does not tie them again."""
    if parts.head.weight is parts.embed.weight or parts.head.weight.data_ptr() == parts.embed.weight.data_ptr():
        parts.head.weight = nn.Parameter(parts.embed.weight.detach().clone())
    for cfg in {id(parts.model.config): parts.model.config, id(parts.text_config): parts.text_config}.values():
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False
    tied = getattr(parts.model, "_tied_weights_keys", None)
    if tied:
        try:
            parts.model._tied_weights_keys = {} if isinstance(tied, dict) else []
        except Exception:  # pragma: no cover - class attribute on exotic models
            pass


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_layer0_inputs(parts: LMParts, calib: list[dict]) -> list[tuple[torch.Tensor, dict]]:
    """Run the full model on each calibration kwargs dict and capture what decoder layer 0 receives
    (hidden states + the layer kwargs: attention mask, position ids/embeddings, ...), stopping the forward there."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kw["use_cache"] = False
        for key in ("cache", "past_key_values", "past_key_value"):
            if key in kw:
                kw[key] = None
        captured.append((hs.detach(), kw))
        raise _StopForward

    handle = parts.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for kw in calib:
            kw = dict(kw)
            kw.setdefault("use_cache", False)
            try:
                parts.model(**kw)
            except _StopForward:
                pass
    finally:
        handle.remove()
    if len(captured) != len(calib):
        raise QAPrunerError("Calibration inputs never reached the first decoder layer of the language model.")
    return captured
