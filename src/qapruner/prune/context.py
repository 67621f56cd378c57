"""PruneContext: the signals a host pruner may read, computed by the caller only when ``Pruner.needs`` asks."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from qapruner.errors import QAPrunerError


@dataclass
class PruneContext:
    visual: Tensor  # (B, N, D) projector outputs = LLM input embeddings of the visual tokens
    grid: tuple[int, int] | None = None  # (h, w) patch grid, h * w == N
    cls_attn: Tensor | None = None  # (B, N) [CLS] -> patch attention, vision tower last layer, head-averaged
    text_embeds: Tensor | None = None  # (B, T, D) LLM input embeddings of the instruction tokens
    text_mask: Tensor | None = None  # (B, T) 1 = real token
    llm_attn: Tensor | None = None  # (B, N) last-token attention to the visual tokens at LLM layer K
    matched_error: Tensor | None = None  # (B, N) ||h - Q(h)|| from the deployed quantizer
    clip_image: Tensor | None = None  # (B, N, C) CLIP image embeddings of the patches (CDPruner's relevance)
    clip_text: Tensor | None = None  # (B, M, C) pooled CLIP text embeddings of the question, one per segment
    clip_text_mask: Tensor | None = None  # (B, M) 1 = a real segment

    @property
    def batch(self) -> int:
        return self.visual.shape[0]

    @property
    def n(self) -> int:
        return self.visual.shape[1]

    def validate(self, needs: frozenset[str] | set[str] = frozenset(), who: str = "pruner") -> None:
        """Check shapes, and that every field in ``needs`` is present; raise QAPrunerError otherwise."""
        if not isinstance(self.visual, Tensor) or self.visual.dim() != 3:
            shape = tuple(self.visual.shape) if isinstance(self.visual, Tensor) else type(self.visual).__name__
            raise QAPrunerError(f"PruneContext.visual must be a (B, N, D) tensor, got {shape}.")
        b, n, _ = self.visual.shape
        if n < 1:
            raise QAPrunerError("PruneContext.visual has no visual tokens (N = 0).")
        for name in needs:
            if getattr(self, name) is None:
                raise QAPrunerError(f"The {who} needs PruneContext.{name}, which was not provided.")
        for name in ("cls_attn", "llm_attn", "matched_error"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (b, n):
                raise QAPrunerError(f"PruneContext.{name} must have shape {(b, n)}, got {tuple(t.shape)}.")
        if self.clip_image is not None and tuple(self.clip_image.shape[:2]) != (b, n):
            raise QAPrunerError(f"PruneContext.clip_image must be (B, N, C) with (B, N) = {(b, n)}, got "
                                f"{tuple(self.clip_image.shape)}.")
        if self.clip_text is not None and (self.clip_text.shape[0] != b or self.clip_image is not None
                                           and self.clip_text.shape[-1] != self.clip_image.shape[-1]):
            raise QAPrunerError(f"PruneContext.clip_text must be (B, M, C) matching clip_image, got "
                                f"{tuple(self.clip_text.shape)}.")
        if self.grid is not None:
            h, w = self.grid
            if h * w != n:
                raise QAPrunerError(f"PruneContext.grid {tuple(self.grid)} does not match N = {n} visual tokens.")
        if self.text_embeds is not None:
            te = self.text_embeds
            if te.dim() != 3 or te.shape[0] != b or te.shape[2] != self.visual.shape[2]:
                raise QAPrunerError(
                    f"PruneContext.text_embeds must be (B, T, D) = ({b}, T, {self.visual.shape[2]}), "
                    f"got {tuple(te.shape)}."
                )
            if self.text_mask is not None and tuple(self.text_mask.shape) != tuple(te.shape[:2]):
                raise QAPrunerError(
                    f"PruneContext.text_mask must have shape {tuple(te.shape[:2])}, got {tuple(self.text_mask.shape)}."
                )

    def row(self, i: int) -> "PruneContext":
        """The context of image ``i`` alone (batch of one)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v[i : i + 1] if isinstance(v, torch.Tensor) else v
        return PruneContext(**kw)
