"""FastV host: keep the visual tokens the last text token attends to most at LLM layer K.

Needs ctx.llm_attn (B, N): the last position's softmax attention to each visual token at layer K,
averaged over heads (FastV, Chen et al. 2024, arXiv 2403.06764, K = 2). The signal exists only inside the
LLM, so this host is used through ``qapruner.prune.inllm.forward_with_inllm_pruning``, which computes it
explicitly. Score = min-max(llm_attn); selection = top-k.
"""

from __future__ import annotations

from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host
from qapruner.prune.sensitivity import minmax


@register_host("fastv")
class FastVHost(Host):
    location = "layer"
    needs = frozenset({"visual", "llm_attn"})
    citation = "FastV (arXiv 2403.06764)"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        return minmax(ctx.llm_attn.float())
