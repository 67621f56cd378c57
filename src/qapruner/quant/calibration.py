"""Calibration data and static activation scales.

``calib`` everywhere is a list of kwargs dicts for ``model(**kw)``. :func:`text_calibration` cuts a text into
such dicts for a causal LM; for LLaVA, pass dicts with ``input_ids`` (containing the image tokens),
``pixel_values`` and ``attention_mask`` so the language model sees visual tokens while it is calibrated.
"""

from __future__ import annotations

import torch

from ..errors import QAPrunerError

# Default calibration text for the perplexity protocol: license texts of Debian's base-files that are *not*
# the evaluation text (GPL-3) nor derived from it (GPL-2/LGPL share its wording), concatenated.
DEFAULT_CALIB_FILES = tuple(f"/usr/share/common-licenses/{n}" for n in
                            ("Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic", "CC0-1.0", "MPL-1.1"))


def default_calibration_text() -> str:
    from pathlib import Path

    return "\n\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in DEFAULT_CALIB_FILES
                       if Path(p).is_file())


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
