"""Uniform host: spatially uniform (strided) coverage of the patch grid.

k anchor tokens are spread over the (h, w) grid: a kh x kw lattice of cell centres with kh ~ sqrt(k h / w),
kw = ceil(k / kh), thinned evenly to exactly k. The score is S^P_i = 1 - dist(i, nearest anchor) / max
distance, so the anchors (score 1) are exactly the host's top-k, and the QA variant can move a kept token
to a nearby, more quantization-sensitive neighbour. Without a grid the tokens are treated as a 1-D
sequence (anchors at floor((j + 1/2) N / k)). This is selection, not averaging: token pooling would change
the embeddings, which an index-returning pruner does not do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host


def _spread(count: int, length: int) -> list[int]:
    """``count`` distinct, evenly spread positions in range(length) (count <= length)."""
    return [int((j + 0.5) * length / count) for j in range(count)]


def grid_anchors(h: int, w: int, k: int) -> Tensor:
    """Exactly k distinct flat indices spread uniformly over an h x w grid (row-major)."""
    k = max(1, min(k, h * w))
    kh = min(h, max(1, round(math.sqrt(k * h / w))))
    kw = min(w, math.ceil(k / kh))
    if kh * kw < k:
        kh = min(h, math.ceil(k / kw))
    rows, cols = _spread(kh, h), _spread(kw, w)
    lattice = [r * w + c for r in rows for c in cols]
    return torch.tensor([lattice[i] for i in _spread(k, len(lattice))], dtype=torch.long)


def uniform_score(h: int, w: int, k: int) -> Tensor:
    """(h*w,) score in [0, 1]: 1 at the anchors, decreasing with the Euclidean grid distance to the nearest."""
    anchors = grid_anchors(h, w, k)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()
    d = torch.cdist(pos, pos[anchors]).amin(dim=-1)
    dmax = d.max()
    return 1.0 - d / dmax if dmax > 0 else torch.ones_like(d)


@register_host("uniform")
class UniformHost(Host):
    needs = frozenset({"visual"})
    optional = frozenset({"grid"})
    citation = "strided/pooled grid baseline (as in the pooling baselines of LLaVA-PruMerge and VisionZip)"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        h, w = ctx.grid if ctx.grid is not None else (1, ctx.n)
        return uniform_score(h, w, k).to(ctx.visual.device).expand(ctx.batch, -1).clone()
