"""Quantization sensitivity of visual tokens (QAPruner, arXiv 2604.02816, and DESIGN.md section 2).

E_i  simulated group-wise symmetric absmax INT{bits} error, plain L2 norm  ||x_i - Q(x_i)||_2
R_i  activation span  max_j x_ij - min_j x_ij
S^Q  = 1/2 minmax(E) + 1/2 minmax(R), min-max taken over the N tokens of one image

The authors' released code (royalneverwin/QVLM, commit "add quantization aware sensitivity",
llava/model/llava_arch.py) runs a different score, offered as ``--sensitivity norm``:
S^Q_i = (||x_i||_2 - min + 1e-6) / (max - min + 1e-6), x_i the projected visual token. Their code takes min
and max over every token of the batch; their evaluation scripts run one image per batch, where that is the
per-image min-max used here (a token's score should not depend on the other images of a batch).

Group-size remainder rule: channels are split into consecutive groups of ``group_size``; when D is not a
multiple of it (the testbed's D = 576 with G = 128), the last, shorter group (576 = 4 * 128 + 64) gets its
own absmax scale, exactly as a full group would. (Implemented by zero-padding: zeros never raise a group's
absmax and quantize to 0 with zero error, so the padded result equals the partial-group rule.)
Everything is computed in float32 whatever the input dtype.

This simulation is deliberately the paper's, not the engine's quantizer (``quant.quantizer``): the paper
divides by ``s + eps`` and gives a partial last group its own scale, while the engine's symmetric absmax
divides by ``s`` exactly and requires the group size to divide D. ``--sensitivity matched`` uses the
deployed engine quantizer instead (``quant.activation_error``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qapruner.errors import QAPrunerError

EPS = 1e-8  # the epsilon of x_hat = round(x / (s + eps)) * s


def fake_quant_groupwise(x: Tensor, bits: int = 4, group_size: int = 128, eps: float = EPS) -> Tensor:
    """Symmetric absmax fake quantization along the last dim, groups of ``group_size`` channels (float32)."""
    if bits < 2 or group_size < 1:
        raise QAPrunerError(f"Need bits >= 2 and group size >= 1, got bits={bits}, group size={group_size}.")
    x = x.float()
    d = x.shape[-1]
    pad = (-d) % group_size
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    g = xp.reshape(*xp.shape[:-1], -1, group_size)
    qmax = 2 ** (bits - 1) - 1
    s = g.abs().amax(dim=-1, keepdim=True) / qmax
    q = torch.round(g / (s + eps)).clamp(-qmax - 1, qmax) * s
    return q.reshape(xp.shape)[..., :d]


def quant_error(x: Tensor, bits: int = 4, group_size: int = 128) -> Tensor:
    """E_i = ||x_i - Q(x_i)||_2 per token: (..., D) -> (...)."""
    x = x.float()
    return torch.linalg.vector_norm(x - fake_quant_groupwise(x, bits, group_size), dim=-1)


def activation_span(x: Tensor) -> Tensor:
    """R_i = max_j x_ij - min_j x_ij per token: (..., D) -> (...)."""
    x = x.float()
    return x.amax(dim=-1) - x.amin(dim=-1)


def minmax(s: Tensor, dim: int = -1) -> Tensor:
    """Min-max normalise to [0, 1] along ``dim``; a constant row maps to all zeros (never NaN)."""
    s = s.float()
    lo = s.amin(dim=dim, keepdim=True)
    hi = s.amax(dim=dim, keepdim=True)
    span = hi - lo
    ok = span > 0
    return torch.where(ok, (s - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(s))


def sensitivity_score(
    visual: Tensor, bits: int = 4, group_size: int = 128, error: Tensor | None = None
) -> Tensor:
    """S^Q (B, N) in [0, 1]. ``error`` (B, N), if given, replaces the simulated E_i ("matched" sensitivity)."""
    e = quant_error(visual, bits, group_size) if error is None else error.float()
    r = activation_span(visual)
    return 0.5 * minmax(e) + 0.5 * minmax(r)


NORM_EPS = 1e-6  # the released code's epsilon, in numerator and denominator


def norm_sensitivity(visual: Tensor) -> Tensor:
    """The released code's S^Q (B, N): (n_i - min n + 1e-6) / (max n - min n + 1e-6), n_i = ||x_i||_2 over the
    N tokens of one image; in (0, 1], and 1 for every token of an image whose tokens all have the same norm."""
    n = torch.linalg.vector_norm(visual.float(), dim=-1)
    lo, hi = n.amin(dim=-1, keepdim=True), n.amax(dim=-1, keepdim=True)
    return (n - lo + NORM_EPS) / (hi - lo + NORM_EPS)


def token_sensitivity(visual: Tensor, kind: str = "paper", bits: int = 4, group_size: int = 128,
                      error: Tensor | None = None) -> Tensor:
    """S^Q (B, N) of one of the sensitivity choices: "paper" (simulated E and R), "matched" (E from the deployed
    quantizer, ``error`` (B, N)) or "norm" (the authors' released L2-norm score)."""
    if kind == "norm":
        return norm_sensitivity(visual)
    if kind == "matched":
        if error is None:
            raise QAPrunerError("The 'matched' sensitivity needs the deployed quantizer's error of each token.")
        return sensitivity_score(visual, bits, group_size, error=error)
    if kind == "paper":
        return sensitivity_score(visual, bits, group_size)
    raise QAPrunerError(f"Unknown sensitivity {kind!r}; choose paper, matched or norm.")


def coefficient_of_variation(raw: Tensor, dim: int = -1) -> Tensor:
    """std / mean along ``dim`` (population std); 0 where the mean is 0."""
    raw = raw.float()
    mean = raw.mean(dim=dim)
    std = raw.std(dim=dim, correction=0)
    return torch.where(mean.abs() > 0, std / torch.where(mean.abs() > 0, mean, torch.ones_like(mean)), torch.zeros_like(mean))


def dynamic_alpha(raw_error: Tensor) -> Tensor:
    """Per-image alpha = 0.55 - 0.10 * clamp((CV - 0.2) / 1.0, 0, 1), CV of the raw error E over the N tokens.

    raw_error (B, N) -> alpha (B,) in [0.45, 0.55]. Images whose tokens differ more in sensitivity give more
    weight to S^Q.
    """
    cv = coefficient_of_variation(raw_error, dim=-1)
    return 0.55 - 0.10 * ((cv - 0.2) / 1.0).clamp(0.0, 1.0)
