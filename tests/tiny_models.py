"""Tiny random Llama / LLaVA models with the testbed's widths (hidden 576, intermediate 1536), for tests."""

from __future__ import annotations

import torch
from transformers import Dinov2Config, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration


def tiny_llama_config(layers: int = 2, vocab: int = 128, hidden: int = 576, intermediate: int = 1536, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=hidden // 9, max_position_embeddings=256,
                       tie_word_embeddings=kw.pop("tie_word_embeddings", True), rms_norm_eps=1e-5, **kw)


def _perturb_norms(model: torch.nn.Module, seed: int) -> None:
    """Random RMSNorm scales (they are all ones at init, which would hide norm-fusion bugs)."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "norm" in name and p.ndim == 1:
            p.data = (0.5 + torch.rand(p.shape, generator=g)).to(p.dtype)


def tiny_llama(layers: int = 2, vocab: int = 128, seed: int = 0, dtype=torch.float32, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(layers, vocab, **kw)).to(dtype).eval()
    _perturb_norms(model, seed)
    return model


IMAGE_TOKEN = 3


def tiny_llava(layers: int = 1, vocab: int = 128, seed: int = 0, dtype=torch.float32, **kw) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   patch_size=14, image_size=56),
        text_config=tiny_llama_config(layers, vocab, **kw),
        image_token_index=IMAGE_TOKEN, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_seq_length=16,
    )
    model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    _perturb_norms(model, seed)
    with torch.no_grad():  # a non-zero projector bias, so forgetting to rotate it shows
        model.model.multi_modal_projector.linear_2.bias.normal_(0, 0.1)
    return model


def tiny_llava_inputs(seq_text: int = 8, seed: int = 0, vocab: int = 128) -> dict:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, vocab, (1, seq_text), generator=g)
    ids = torch.cat([text[:, :2], torch.full((1, 16), IMAGE_TOKEN), text[:, 2:]], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, 56, 56, generator=g)}
