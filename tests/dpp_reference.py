"""Brute-force DPP references for the tests: naive greedy (recomputes every log det) and exhaustive MAP."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def _logdet(L: Tensor) -> float:
    if L.numel() == 0:
        return 0.0
    sign, val = torch.linalg.slogdet(L)
    return float(val) if sign > 0 else float("-inf")


def dpp_greedy_naive(kernel: Tensor, k: int) -> Tensor:
    """Reference greedy for one kernel (N, N): recompute log det(L_{S+i}) by brute force at every step."""
    L = kernel.double()
    n = L.shape[0]
    sel: list[int] = []
    for _ in range(k):
        best, best_i = float("-inf"), None
        for i in range(n):
            if i in sel:
                continue
            idx = torch.tensor(sel + [i])
            v = _logdet(L[idx][:, idx])
            if best_i is None or v > best:
                best, best_i = v, i
        sel.append(best_i)
    return torch.tensor(sorted(sel), dtype=torch.long)


def dpp_map_exhaustive(kernel: Tensor, k: int) -> tuple[Tensor, float]:
    """Exact MAP for one kernel (N, N): the size-k subset of largest log det (small N only)."""
    L = kernel.double()
    best, best_s = float("-inf"), None
    for s in itertools.combinations(range(L.shape[0]), k):
        idx = torch.tensor(s)
        v = _logdet(L[idx][:, idx])
        if best_s is None or v > best:
            best, best_s = v, s
    return torch.tensor(best_s, dtype=torch.long), best


def dpp_logdet(kernel: Tensor, idx: Tensor) -> float:
    """log det of the principal submatrix of one kernel (N, N) on ``idx``."""
    L = kernel.double()
    return _logdet(L[idx][:, idx])
