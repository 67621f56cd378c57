"""[CLS]-attention host: keep the patches the vision tower's [CLS] token attends to most.

Needs ctx.cls_attn (B, N): the [CLS] -> patch attention of the vision tower's last layer, averaged over
heads (FasterVLM, Zhang et al. 2024, arXiv 2412.01818; VisionZip's "dominant" tokens, Yang et al. 2024,
arXiv 2412.04467). Score = min-max(cls_attn); selection = top-k.
"""

from __future__ import annotations

from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host
from qapruner.prune.sensitivity import minmax


@register_host("cls")
class ClsAttentionHost(Host):
    needs = frozenset({"visual", "cls_attn"})
    citation = "FasterVLM (arXiv 2412.01818); VisionZip dominant tokens (arXiv 2412.04467)"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        return minmax(ctx.cls_attn.float())
