"""Where a LLaVA-family model's visual tokens are, and how to feed a chosen subset of them to the LLM.

Every path (training, evaluation, pruning, calibration) builds the language model's input the same way:
the chat-template text with a single ``<image>`` placeholder is tokenized, the placeholder is expanded to the
number of visual tokens actually kept, and the projected features are spliced in at those positions.
Pre-LLM pruning therefore gives a shorter sequence with contiguous position ids (the policy of CDPruner /
VisionZip style pruners: kept tokens are renumbered in their original order).
"""

from __future__ import annotations

import torch


def user_turn(processor, prompt: str, answer: str | None = None) -> str:
    """Chat-template text of one user turn (image first, as LLaVA does), ready for the assistant's answer."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return text if answer is None else text + answer


def image_token_id(model) -> int:
    return int(model.config.image_token_index)


def tokenize_with_visual(tokenizer, text: str, image_id: int, n_visual: int) -> list[int]:
    """Token ids of ``text`` with its single image placeholder expanded to ``n_visual`` image tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids.count(image_id) != 1:
        raise ValueError(f"expected exactly one image placeholder in the prompt, found {ids.count(image_id)}")
    at = ids.index(image_id)
    return ids[:at] + [image_id] * n_visual + ids[at + 1 :]


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so that the last position of every row is the position that predicts the answer."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def project(model, vision_features: torch.Tensor) -> torch.Tensor:
    """Projector outputs (B, N, D_llm) = the LLM input embeddings of the visual tokens."""
    proj = model.model.multi_modal_projector
    return proj(vision_features.to(next(proj.parameters()).dtype))


def splice_visual(model, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """LLM input embeddings: text embeddings with ``visual`` (B, k, D) written at the image-token positions."""
    embeds = model.get_input_embeddings()(input_ids)
    mask = input_ids == image_token_id(model)
    counts = mask.sum(1)
    if not torch.all(counts == visual.shape[1]):
        raise ValueError(f"rows have {counts.tolist()} image tokens but {visual.shape[1]} visual embeddings")
    return embeds.masked_scatter(mask.unsqueeze(-1), visual.to(embeds.dtype))


def visual_positions(model, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, k) positions of the image tokens in each row."""
    mask = input_ids == image_token_id(model)
    k = int(mask.sum(1)[0])
    return mask.nonzero()[:, 1].view(input_ids.shape[0], k)
