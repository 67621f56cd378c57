"""Attention for a language model run in bf16 / fp16 on a CPU: decode steps attend in fp32.

PyTorch's CPU SDPA kernels are slow for a single bf16 query row (a decode step): measured on this project's
machines (1 thread, 9 heads × 64, 300 cached keys) 440 µs per call in bf16 against 87 µs for the same call
upcast to fp32 and cast back, while a 300-token prefill costs about the same either way (3.9 ms bf16, 5.6 ms
upcast). So decode steps (one query row) run SDPA on fp32 copies of q, k, v and return the output in the
model's dtype; every other call is transformers' own SDPA, unchanged. The decode step is also more precise:
fp32 softmax and accumulation instead of bf16.

Registered with transformers' ``AttentionInterface`` under ``NAME``; ``LlavaAdapter.cast`` selects it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_fp32_decode"
SDPA_LIKE = ("eager", "sdpa", NAME)  # implementations the hand-written decoder loop (in-LLM pruning) accepts


def fp32_decode_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs):
    """transformers' SDPA; for one query row in a low-precision dtype, computed in fp32."""
    if query.shape[-2] != 1 or query.dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(NAME, fp32_decode_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets (without it: no mask at all)


def use_fp32_decode(config) -> None:
    """Select the fp32-decode SDPA for a model (its text config) that uses SDPA on a CPU in low precision."""
    if getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = NAME
