"""FastV host: keep the visual tokens the last text token attends to most, pruning the input of LLM layer K.

Needs ctx.llm_attn (B, N): the last position's softmax attention to each visual token computed *inside layer
K - 1* (on that layer's input), averaged over heads. That is what FastV's public code ranks by (Chen et al. 2024,
arXiv 2403.06764, pkunlp-icler/FastV: with K = 2 it keeps the attention weights of layer 1 and prunes the
hidden states entering layer 2). The signal exists only inside the LLM, so this host runs through
``qapruner.prune.inllm.prune_at_layer``, which computes it explicitly. Score = min-max(llm_attn); top-k.
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
