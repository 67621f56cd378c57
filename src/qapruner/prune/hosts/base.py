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


HOSTS: dict[str, type["Host"]] = {}  # filled by @register_host, in import order (hosts/__init__.py)


def register_host(name: str):
    """Class decorator: make a host available as ``--prune NAME``."""
    def add(cls):
        cls.name = name
        HOSTS[name] = cls
        return cls
    return add


class Host:
    name: str = ""
    location: str = "input"  # "input": prune the projector outputs before the LLM; "layer": at LLM layer K
    needs: frozenset[str] = frozenset({"visual"})  # PruneContext fields that must be present
    optional: frozenset[str] = frozenset()  # fields used when present (compute them if you can)
    citation: str = ""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, ctx: PruneContext, k: int) -> Tensor:  # (B, N) float32 in [0, 1]
        raise NotImplementedError

    def select(self, ctx: PruneContext, k: int, score: Tensor) -> Tensor:  # (B, k) ascending
        return topk_stable(score, k)
