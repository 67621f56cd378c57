"""Calibration data and static activation scales.

``calib`` everywhere is a list of kwargs dicts for ``model(**kw)``. :func:`text_calibration` cuts a text into
such dicts for a causal LM; for LLaVA, pass dicts with ``input_ids`` (containing the image tokens),
``pixel_values`` and ``attention_mask`` so the language model sees visual tokens while it is calibrated.
"""

from __future__ import annotations

import torch

from ..errors import QAPrunerError

DEFAULT_CALIB_TEXT = "/usr/share/common-licenses/Apache-2.0"


def text_calibration(tokenizer, text: str, tokens: int = 2048, seq_len: int = 512) -> list[dict]:
    """The first ``tokens`` tokens of ``text`` as ``ceil(tokens / seq_len)`` sequences of ``seq_len`` tokens."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < 2:
        raise QAPrunerError("The calibration text is empty.")
    ids = ids[:tokens]
    return [{"input_ids": ids[i:i + seq_len].unsqueeze(0)} for i in range(0, ids.numel(), seq_len)
            if ids[i:i + seq_len].numel() >= 2]


def _run(model, calib, progress, desc):
    it = calib if progress is None else progress(calib, total=len(calib), description=desc)
    for kw in it:
        kw = dict(kw)
        kw.setdefault("use_cache", False)
        model(**kw)


@torch.no_grad()
def calibrate_static_scales(model, quantizers, calib, progress=None) -> None:
    """Two passes over ``calib``: activation ranges, then the MSE-best clip ratio per static quantizer."""
    for q in quantizers:
        q.observe = "range"
    _run(model, calib, progress, "static scales: ranges")
    for q in quantizers:
        q.observe = "mse"
    _run(model, calib, progress, "static scales: clip search")
    for q in quantizers:
        q.finish_calibration()
