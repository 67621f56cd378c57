"""Fusion of the host's semantic score with the quantization sensitivity: S = a * S^P + (1 - a) * S^Q."""

from __future__ import annotations

import torch
from torch import Tensor


def fuse(host: Tensor, sq: Tensor, alpha: float | Tensor) -> Tensor:
    """S = alpha * host + (1 - alpha) * sq, per image.

    ``host`` must already be on a [0, 1] scale (min-max normalised S^P, CDPruner's normalised relevance, or
    DivPrune's constant quality 1). ``alpha`` is a float or a (B,) tensor (dynamic alpha, one per image).
    """
    host = host.float()
    sq = sq.float()
    if isinstance(alpha, Tensor):
        a = alpha.float().reshape(-1, *([1] * (host.dim() - 1)))
    else:
        a = torch.tensor(float(alpha), dtype=torch.float32, device=host.device)
    return a * host + (1.0 - a) * sq
