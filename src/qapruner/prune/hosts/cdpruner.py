"""CDPruner host: instruction-conditioned DPP (Zhang et al., NeurIPS 2025, arXiv 2506.10967).

Two relevance sources (``PruneConfig.relevance``):

- ``clip:MODEL`` (CDPruner's own, for CLIP vision towers such as LLaVA-1.5's): r_i is computed as in
  CDPruner's public code (Theia-4869/CDPruner, llava_arch.encode_images): the CLIP image embedding of patch i
  (the selected vision layer → post-layernorm → visual projection) against the pooled CLIP text embedding of
  the question, one per 77-token segment; r_i = mean_m of −cos(img_i, txt_m) (the sign is CDPruner's), then
  (r − min r + 1e-6) / (max r − min r). CDPruner takes min and max over every token of the batch; it runs
  one image per batch, and qapruner takes them per image (identical there; a row must not depend on its
  batch). See ``clip_relevance``.
- ``llm`` (the default; the testbed's DINOv2 tower has no text tower): r_i = the cosine between visual token
  i (projector output) and each real instruction token embedded by the LLM, averaged over the instruction
  tokens (text_mask), min-max normalised per image, with the natural sign (more similar = more relevant).
  An image without instruction tokens, or with constant relevance, gets r = 1 (pure diversity).

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


CLIP_EPS = 1e-6  # CDPruner's: in the numerator only


def clip_relevance(image: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """CDPruner's relevance: image (B, N, C) CLIP patch embeddings, text (B, M, C) pooled CLIP text embeddings
    (one per segment; ``text_mask`` (B, M) marks real segments) -> (B, N) in (0, 1 + 1e-6]."""
    img = image.float() / image.float().norm(dim=-1, keepdim=True)
    txt = text.float() / text.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)  # padding segments are zeros
    cos = img @ txt.transpose(-1, -2)  # (B, N, M)
    m = torch.ones(txt.shape[:2], device=img.device) if text_mask is None else text_mask.to(img.device).float()
    rel = (-cos * m.unsqueeze(1)).sum(dim=-1) / m.sum(dim=-1, keepdim=True).clamp_min(1.0)
    lo, hi = rel.amin(dim=-1, keepdim=True), rel.amax(dim=-1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (rel - lo + CLIP_EPS) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.ones_like(rel))


@register_host("cdpruner")
class CDPrunerHost(Host):
    citation = "CDPruner (arXiv 2506.10967); greedy MAP of Chen et al. 2018 (arXiv 1709.05135)"
    relevance = "llm"  # "llm" | "clip" (set by the Pruner from PruneConfig.relevance)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"visual", "clip_image", "clip_text"} if self.relevance == "clip" else {"visual", "text_embeds"})

    @property
    def optional(self) -> frozenset[str]:
        return frozenset({"clip_text_mask"} if self.relevance == "clip" else {"text_mask"})

    def score(self, ctx: PruneContext, k: int) -> Tensor:
        if self.relevance == "clip":
            return clip_relevance(ctx.clip_image, ctx.clip_text, ctx.clip_text_mask)
        return instruction_relevance(ctx.visual, ctx.text_embeds, ctx.text_mask)

    def select(self, ctx: PruneContext, k: int, score: Tensor) -> Tensor:
        return dpp_greedy(dpp_kernel(ctx.visual, score), k)
