"""CDPruner host: instruction-conditioned DPP (Zhang et al., NeurIPS 2025, arXiv 2506.10967).

Relevance r_i: cosine similarity between visual token i and each real instruction token, averaged over
the instruction tokens (text_mask), then min-max normalised per image. CDPruner measures it in CLIP space
(and, for LLaVA-1.5, negates it); our vision tower has no text tower, so we measure it in the LLM input
space (projector outputs vs. embedded instruction tokens) with the natural sign: more similar = more
relevant. An image without instruction tokens, or with constant relevance, gets r = 1 (pure diversity).

Kernel L = diag(q) Sim diag(q), Sim = cosine similarity of the visual tokens, q = r for the host and the
fused S = alpha * r + (1 - alpha) * S^Q for the QA variant; selection = DPP greedy MAP (Chen et al. 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qapruner.prune.context import PruneContext
from qapruner.prune.hosts.base import Host, register_host
from qapruner.prune.select import dpp_greedy, dpp_kernel


def instruction_relevance(visual: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """(B, N, D), (B, T, D), (B, T) -> (B, N) in [0, 1]: min-max of the mean cosine over real text tokens."""
    v = visual.float()
    t = text.float()
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = v @ t.transpose(-1, -2)  # (B, N, T)
    m = torch.ones(t.shape[:2], device=v.device) if text_mask is None else text_mask.to(v.device).float()
    cnt = m.sum(dim=-1, keepdim=True)  # (B, 1)
    rel = (cos * m.unsqueeze(1)).sum(dim=-1) / cnt.clamp_min(1.0)
    lo, hi = rel.amin(dim=-1, keepdim=True), rel.amax(dim=-1, keepdim=True)
    span = hi - lo
    ok = (span > 0) & (cnt > 0)
    return torch.where(ok, (rel - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(rel))


@register_host("cdpruner")
class CDPrunerHost(Host):
    needs = frozenset({"visual", "text_embeds"})
    optional = frozenset({"text_mask"})
    citation = "CDPruner (arXiv 2506.10967); greedy MAP of Chen et al. 2018 (arXiv 1709.05135)"

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        return instruction_relevance(ctx.visual, ctx.text_embeds, ctx.text_mask)

    def select(self, ctx: PruneContext, k: int, score: Tensor) -> Tensor:
        return dpp_greedy(dpp_kernel(ctx.visual, score), k)
