"""Host pruner interface: a host scores tokens on a [0, 1] scale and selects k of them given a score.

``score(ctx, k)`` is the host's semantic score S^P (min-max normalised per image; for CDPruner the
normalised instruction relevance, for DivPrune a constant quality 1). ``select(ctx, k, score)`` runs the
host's own selection rule with that score: top-k for scoring hosts, DPP greedy MAP with quality = score
for CDPruner, quality-weighted max-min diversity for DivPrune. The host alone is
``select(ctx, k, score(ctx, k))``; the quantization-aware variant passes the fused score instead.
"""

from __future__ import annotations

from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.select import topk_stable


class Host:
    name: str = ""
    needs: frozenset[str] = frozenset({"visual"})  # PruneContext fields that must be present
    optional: frozenset[str] = frozenset()  # fields used when present (compute them if you can)
    citation: str = ""

    def score(self, ctx: PruneContext, k: int) -> Tensor:  # (B, N) float32 in [0, 1]
        raise NotImplementedError

    def select(self, ctx: PruneContext, k: int, score: Tensor) -> Tensor:  # (B, k) ascending
        return topk_stable(score, k)
