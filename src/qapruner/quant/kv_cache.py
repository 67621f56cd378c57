"""KV-cache fake-quantization: keys (after RoPE) and values, per head and per token (one asymmetric
scale/zero per head_dim vector), before they enter the cache and the attention.

Implemented by swapping the forward of each Llama attention module for an equivalent one that quantizes
``key_states`` / ``value_states`` right after RoPE; the original forward is kept in ``_qapruner_orig_forward``.
"""

from __future__ import annotations

import types

import torch
from transformers.models.llama import modeling_llama as ml

from .quantizer import fake_quant_minmax


def _kv_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    if cache is None:
        cache = kwargs.pop("past_key_values", None) or kwargs.pop("past_key_value", None)
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = ml.apply_rotary_pos_emb(q, k, cos, sin)
    bits = self._qapruner_kv_bits
    k = fake_quant_minmax(k, bits, sym=False, dim=-1)
    v = fake_quant_minmax(v, bits, sym=False, dim=-1)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
    attn = ml.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ml.eager_attention_forward)
    out, weights = attn(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                        scaling=self.scaling, **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), weights


def install_kv_quant(layers, bits: int) -> None:
    for layer in layers:
        attn = layer.self_attn
        if not hasattr(attn, "_qapruner_orig_forward"):
            attn._qapruner_orig_forward = attn.forward
        attn._qapruner_kv_bits = bits
        attn.forward = types.MethodType(_kv_forward, attn)
