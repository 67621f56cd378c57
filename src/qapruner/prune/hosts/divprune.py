"""DivPrune host: greedy max-min diversity of the visual tokens under cosine distance.

DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175) solves a Max-Min Diversity Problem greedily: first the
token farthest from its nearest neighbour, then repeatedly the token whose distance to the kept set is
largest. It has no per-token semantic score, i.e. its quality is the constant 1.

QA combination (quality-weighted max-min): the constant quality is fused like any host score,
q = alpha * 1 + (1 - alpha) * S^Q, and each greedy step maximises q_i * min_{j in S} d_ij. This mirrors
the DPP greedy, whose step gain is q_i^2 times the residual (squared) distance of i to the kept set.
alpha = 1 gives q = 1, i.e. DivPrune exactly; alpha = 0 gives q = S^Q, which still needs diversity
(the least sensitive token has q = 0 and is taken last).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host
from qapruner.prune.select import cosine_distance, maxmin_greedy


@register_host("divprune")
class DivPruneHost(Host):
    needs = frozenset({"visual"})
    citation = "DivPrune (arXiv 2503.02175)"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        return torch.ones(ctx.batch, ctx.n, device=ctx.visual.device)

    def select(self, ctx: PruneContext, k: int, score: Tensor) -> Tensor:
        return maxmin_greedy(cosine_distance(ctx.visual), k, score)
