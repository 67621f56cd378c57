"""Random host: a seeded uniform random score per token, top-k.

The score depends only on (seed, N), not on the image or its place in the batch, so runs are reproducible
and batch-size invariant; every image of a run therefore keeps the same random positions (a fixed random
mask), which is statistically what a random baseline needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host
from qapruner.prune.sensitivity import minmax


@register_host("random")
class RandomHost(Host):
    needs = frozenset({"visual"})
    citation = "random baseline"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        s = torch.rand(ctx.n, generator=g)
        return minmax(s).to(ctx.visual.device).expand(ctx.batch, -1).clone()
