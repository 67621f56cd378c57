"""CDPruner's relevance signals from a CLIP model whose vision tower is the LLaVA model's (``--relevance
clip:MODEL``, e.g. ``openai/clip-vit-large-patch14-336`` for llava-1.5).

As CDPruner's public code computes them (Theia-4869/CDPruner, clip_encoder.CLIPVisionTower.forward):

- image: the patch features LLaVA feeds its projector (the selected vision layer, without [CLS]) → the vision
  tower's post-layernorm → CLIP's visual projection: (B, N, C);
- text: the question tokenized by CLIP's tokenizer without truncation, zero-padded (ids and attention mask) to
  a multiple of the text tower's 77 positions and cut into 77-token segments, each encoded by the text tower
  with projection (pooled): (M, C) per question, M = number of segments.

The host turns them into relevance (``prune.hosts.cdpruner.clip_relevance``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import QAPrunerError

_LOADED: dict[str, "ClipRelevance"] = {}


class ClipRelevance:
    def __init__(self, spec: str, vision_tower):
        from transformers import CLIPModel, CLIPTokenizerFast

        try:
            clip = CLIPModel.from_pretrained(spec)
            self.tokenizer = CLIPTokenizerFast.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise QAPrunerError(f"Cannot load the CLIP model '{spec}' for CDPruner's relevance (a local directory or "
                                f"hub id of a CLIPModel with its tokenizer): {str(exc).splitlines()[0]}") from None
        weight = next(vision_tower.parameters())  # run where and in the precision the model's tower runs
        clip.to(device=weight.device, dtype=weight.dtype).eval()
        self.spec = spec
        self.text_tower = clip.text_model
        self.text_projection = clip.text_projection
        self.visual_projection = clip.visual_projection
        self.positions = clip.config.text_config.max_position_embeddings
        self.post_layernorm = _check_same_tower(spec, clip.vision_model, vision_tower)

    @torch.no_grad()
    def image_embeds(self, features: Tensor) -> Tensor:
        """(B, N, Dv) selected patch features -> (B, N, C) CLIP image embeddings (float32)."""
        ln = self.post_layernorm
        x = ln(features.to(device=ln.weight.device, dtype=ln.weight.dtype))
        return self.visual_projection(x.to(self.visual_projection.weight.dtype)).float()

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Pooled, projected CLIP text embeddings of each text's 77-token segments: (B, M, C) and mask (B, M)."""
        per_text = [self._segments(t) for t in texts]
        m = max(e.shape[0] for e in per_text)
        out = torch.zeros(len(texts), m, per_text[0].shape[1])
        mask = torch.zeros(len(texts), m, dtype=torch.long)
        for i, e in enumerate(per_text):
            out[i, : e.shape[0]], mask[i, : e.shape[0]] = e, 1
        return out, mask

    def _segments(self, text: str) -> Tensor:
        enc = self.tokenizer(text=[text], return_tensors="pt")
        length = enc["input_ids"].shape[1]
        segments = (length - 1) // self.positions + 1
        padding = self.positions * segments - length
        kw = {k: torch.cat([v, v.new_zeros((1, padding))], dim=1).reshape(-1, self.positions)
              for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        device = self.text_projection.weight.device
        pooled = self.text_tower(**{k: v.to(device) for k, v in kw.items()}).pooler_output
        return self.text_projection(pooled).float().cpu()


def _check_same_tower(spec: str, clip_vision, tower):
    """The post-layernorm CDPruner uses (the model's own tower's), after checking that the CLIP's vision tower
    is the model's: same patch embedding and same post-layernorm."""
    model_vision = getattr(tower, "vision_model", tower)  # transformers 4 nests the transformer, 5 does not
    if not hasattr(model_vision, "post_layernorm") or not hasattr(getattr(model_vision, "embeddings", None),
                                                                  "patch_embedding"):
        raise QAPrunerError(f"--relevance clip:{spec} needs a CLIP vision tower; this model's is "
                            f"{type(tower).__name__}. Use --relevance llm.")
    # CLIP was cast to the tower's dtype: a tower loaded in half precision from the same weights is equal
    mine, theirs = model_vision.embeddings.patch_embedding.weight, clip_vision.embeddings.patch_embedding.weight
    same = mine.shape == theirs.shape and torch.equal(mine.detach().cpu(), theirs.detach().cpu())
    same = same and torch.equal(model_vision.post_layernorm.weight.detach().cpu(),
                                clip_vision.post_layernorm.weight.detach().cpu())
    if not same:
        raise QAPrunerError(f"The CLIP model '{spec}' is not this model's vision tower (its patch embedding or "
                            "post-layernorm differ), so its text tower does not share the tower's embedding space.")
    return model_vision.post_layernorm


def clip_relevance_for(spec: str, vision_tower) -> ClipRelevance:
    """Loaded once per process and CLIP model."""
    key = f"{spec}@{id(vision_tower)}"
    if key not in _LOADED:
        _LOADED[key] = ClipRelevance(spec, vision_tower)
    return _LOADED[key]


__all__ = ["ClipRelevance", "clip_relevance_for"]
