"""Subset selection: stable top-k, DPP greedy MAP (fast incremental Cholesky), max-min diversity.

Every selector returns (B, k) LongTensor indices sorted ascending per row, and breaks ties by the lower
token index, so results are deterministic and a batch gives the same rows as images taken one at a time.
"""

from __future__ import annotations


import torch
from torch import Tensor

from qapruner.errors import QAPrunerError

DPP_TOL = 1e-12  # residual variance below which a candidate is treated as linearly dependent


def _check_finite(scores: Tensor, what: str) -> None:
    if torch.isnan(scores).any():
        raise QAPrunerError(f"The {what} contains NaN values; check the signal passed in PruneContext.")


def topk_stable(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores per row (ties: lower index first), returned ascending. (B, N) -> (B, k)."""
    _check_finite(scores, "token score")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return order.sort(dim=-1).values


def dpp_kernel(features: Tensor, quality: Tensor | None = None) -> Tensor:
    """L = diag(q) . Sim . diag(q), Sim = cosine similarity of the rows of ``features`` (B, N, D) -> (B, N, N)."""
    f = features.float()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = f @ f.transpose(-1, -2)
    if quality is None:
        return sim
    q = quality.float()
    return q.unsqueeze(-1) * sim * q.unsqueeze(-2)


def dpp_greedy(kernel: Tensor, k: int) -> Tensor:
    """Greedy MAP of a DPP with PSD kernel (B, N, N), the incremental Cholesky form of Chen et al. (2018).

    Each step adds argmax_i d_i^2, the residual variance of item i given the chosen set, which equals the
    gain det(L_{S+i}) / det(L_S). Cost O(B * N * k^2) after the kernel. Computed in float64.
    """
    L = kernel.double()
    b, n, _ = L.shape
    ar = torch.arange(b, device=L.device)
    d2 = torch.diagonal(L, dim1=-2, dim2=-1).clone()
    c = torch.zeros(b, k, n, dtype=L.dtype, device=L.device)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=L.device)
    out = torch.empty(b, k, dtype=torch.long, device=L.device)
    for t in range(k):
        j = d2.masked_fill(chosen, float("-inf")).argmax(dim=-1)
        out[:, t] = j
        chosen[ar, j] = True
        dj = d2[ar, j]
        e = L[ar, j] - torch.einsum("bt,btn->bn", c[ar, :t, j], c[:, :t])
        ok = dj > DPP_TOL
        e = torch.where(ok.unsqueeze(-1), e / dj.clamp_min(DPP_TOL).sqrt().unsqueeze(-1), torch.zeros_like(e))
        c[:, t] = e
        d2 = d2 - e * e
    return out.sort(dim=-1).values


def cosine_distance(features: Tensor) -> Tensor:
    """1 - cosine similarity, clamped to [0, 2]: (B, N, D) -> (B, N, N)."""
    return (1.0 - dpp_kernel(features)).clamp(0.0, 2.0)


def maxmin_greedy(dist: Tensor, k: int, quality: Tensor | None = None) -> Tensor:
    """Greedy max-min diversity (DivPrune) on distances (B, N, N), optionally quality-weighted.

    Step 1 picks argmax_i q_i * min_{j != i} d_ij (the most isolated token); step t picks
    argmax_i q_i * min_{j in S} d_ij over unchosen i. With q = None (all ones) this is DivPrune's greedy.
    """
    d = dist.float()
    b, n, _ = d.shape
    ar = torch.arange(b, device=d.device)
    q = torch.ones(b, n, device=d.device) if quality is None else quality.float()
    _check_finite(q, "diversity quality")
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    nn_dist = d.masked_fill(eye, float("inf")).amin(dim=-1) if n > 1 else torch.zeros(b, n, device=d.device)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=d.device)
    out = torch.empty(b, k, dtype=torch.long, device=d.device)
    mind = None
    for t in range(k):
        gain = q * (nn_dist if mind is None else mind)
        j = gain.masked_fill(chosen, float("-inf")).argmax(dim=-1)
        out[:, t] = j
        chosen[ar, j] = True
        row = d[ar, j]
        mind = row if mind is None else torch.minimum(mind, row)
    return out.sort(dim=-1).values
