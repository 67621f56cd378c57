"""Tensor helpers for token sequences: left/right padding, position ids from the mask, per-row gathering, and
the 4-D additive attention mask of the hand-written decoder loop."""

from __future__ import annotations

import torch
from torch import Tensor


def position_ids(mask: Tensor) -> Tensor:
    """Left padding: positions count real tokens only (``cumsum(mask) - 1``, clamped at 0, the convention
    generate() uses), so a row's result does not depend on its batch."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(rows: list[list[int]], pad_id: int, side: str = "left") -> tuple[Tensor, Tensor]:
    """Pad token rows to one width. Left (inference): the last position of every row predicts the answer;
    right (training): targets keep their positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.tensor(r)
        mask[i, cols] = 1
    return ids, mask


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``x`` (B, L[, D]) at ``idx`` (B, k), per batch element."""
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 0/1 padding mask -> (B, 1, L, L) additive float mask: causal and no attention to padding.
    Eager and SDPA attention both accept it. Fully masked rows (queries on left pads) become uniform instead
    of NaN; their outputs are never read."""
    b, length = mask.shape
    dev = mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    allowed = causal[None] & mask.bool()[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=dev)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=dev)
    return torch.where(allowed, zero, neg)[:, None]
