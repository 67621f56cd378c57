"""In-LLM pruning location (FastV style): prune visual tokens at the input of decoder layer K.

``forward_with_inllm_pruning(lm, inputs_embeds, attention_mask, visual_positions, pruner)`` runs layers
0..K-1 over the full (left-padded) sequence, computes the last position's attention to the visual tokens
at layer K explicitly, lets the pruner choose, drops the other visual tokens from the hidden states,
attention mask and position ids, runs layers K..end and returns the last position's logits.

``lm`` may be a ``LlamaForCausalLM``-like model (``.model`` decoder + ``.lm_head``), a
``LlavaForConditionalGeneration`` (decoder ``.model.language_model``, head ``.lm_head``), or a pair
``(decoder, lm_head)``. The decoder must be LlamaModel-like: ``.layers``, ``.norm``, ``.rotary_emb``, and
each layer ``input_layernorm`` + ``self_attn.{q_proj,k_proj,head_dim,scaling}``. The projections may be any
module with ``nn.Linear``'s call signature (e.g. fake-quant linears): they are only called, never
inspected.

The attention mask is built here as a 4-D additive float mask (causal + key padding, ``finfo.min`` where
masked), which the eager and SDPA attention implementations both accept, so SDPA stays in use for every
layer; the layer-K score is computed separately in the eager way (RoPE, GQA head repetition, float32
softmax, mean over heads).

Position ids: by default ``cumsum(attention_mask) - 1`` (clamped at 0), the convention generate() uses
for left-padded batches, so a row gives the same result alone or in a batch. Kept tokens keep their
original position ids after pruning (as FastV does), so RoPE still sees the true image layout and the
text after the image keeps its positions; the dropped ids simply leave gaps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qapruner.errors import QAPrunerError
from qapruner.prune.context import PruneContext
from qapruner.prune.pruner import Pruner


def resolve_lm(lm: Any) -> tuple[nn.Module, nn.Module]:
    """(decoder, lm_head) from a CausalLM, a Llava model, or a (decoder, lm_head) pair."""
    if isinstance(lm, (tuple, list)):
        if len(lm) != 2:
            raise QAPrunerError("Pass the language model as a CausalLM module or a (decoder, lm_head) pair.")
        decoder, head = lm
    elif hasattr(lm, "lm_head") and hasattr(lm, "model"):
        decoder = getattr(lm.model, "language_model", lm.model)
        head = lm.lm_head
    else:
        raise QAPrunerError(
            f"Cannot find the decoder and lm_head of {type(lm).__name__}; pass a (decoder, lm_head) pair."
        )
    for attr in ("layers", "norm", "rotary_emb"):
        if not hasattr(decoder, attr):
            raise QAPrunerError(f"The decoder {type(decoder).__name__} has no '{attr}'; it must be LlamaModel-like.")
    impl = getattr(getattr(decoder, "config", None), "_attn_implementation", None)
    if impl is not None and impl not in ("eager", "sdpa"):
        raise QAPrunerError(
            f"In-LLM pruning needs attn_implementation 'sdpa' or 'eager' (4-D float masks), got {impl!r}."
        )
    return decoder, head


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 0/1 padding mask -> (B, 1, L, L) additive float mask: causal and no attention to padding.

    Fully masked rows (queries on left pads) become uniform instead of NaN; their outputs are never read.
    """
    b, length = attention_mask.shape
    dev = attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=dev)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=dev)
    return torch.where(allowed, zero, neg)[:, None]


def default_position_ids(attention_mask: Tensor) -> Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def last_token_attention(
    layer: nn.Module, hidden: Tensor, mask4d: Tensor, position_embeddings: tuple[Tensor, Tensor]
) -> Tensor:
    """Head-averaged softmax attention row of the LAST position at ``layer``: (B, L, D) -> (B, L).

    Same arithmetic as eager attention: input_layernorm, q/k projections (full sequence, so activation
    quantizers see what they see in the real forward), optional q/k norms, RoPE, GQA repetition, scaling,
    additive mask, float32 softmax; then the mean over heads.
    """
    attn = layer.self_attn
    b, length, _ = hidden.shape
    hd = attn.head_dim
    hn = layer.input_layernorm(hidden)
    q = attn.q_proj(hn).view(b, length, -1, hd)
    k = attn.k_proj(hn).view(b, length, -1, hd)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    q, k = q.transpose(1, 2)[:, :, -1:], k.transpose(1, 2)  # (B, Hq, 1, hd), (B, Hkv, L, hd)
    cos, sin = position_embeddings
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, hd)
    q = q * cos[:, :, -1:] + _rotate_half(q) * sin[:, :, -1:]
    k = k * cos + _rotate_half(k) * sin
    k = _repeat_kv(k, q.shape[1] // k.shape[1])
    scores = (q @ k.transpose(-1, -2)) * attn.scaling + mask4d[:, :, -1:, :]
    p = torch.softmax(scores.float(), dim=-1)  # (B, H, 1, L)
    return p.mean(dim=1)[:, 0]


def _run_layers(layers, hidden, mask4d, position_ids, position_embeddings):
    for layer in layers:
        out = layer(
            hidden,
            attention_mask=mask4d,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            use_cache=False,
        )
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def forward_with_inllm_pruning(
    lm: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    visual_positions: Tensor,
    pruner: Pruner,
    ctx_extra: dict[str, Any] | None = None,
    position_ids: Tensor | None = None,
    sensitivity_input: str = "residual",
) -> tuple[Tensor, Tensor]:
    """Prune visual tokens at layer ``pruner.config.layer_k``; return (last logits (B, V), keep_idx (B, k)).

    inputs_embeds (B, L, D) left-padded; attention_mask (B, L) with 0 on pads; visual_positions (B, N)
    the sequence positions of the N visual tokens of each row (the order of the pruner's token index).
    ``ctx_extra``: other PruneContext fields (grid, cls_attn, text_embeds, text_mask, matched_error),
    passed as given; ``matched_error`` may also be a callable mapping the layer-K visual states (B, N, D)
    to (B, N) errors. ``visual`` and ``llm_attn`` are always set here: ``visual`` is the residual stream
    entering layer K (``sensitivity_input="residual"``, the in-LLM analogue of the projector outputs the
    pre-LLM location scores) or ``input_layernorm_K`` of it (``"normed"``, exactly what layer K's
    q/k/v activation quantizers see).
    """
    decoder, head = resolve_lm(lm)
    layers = decoder.layers
    kk = pruner.config.layer_k
    if not 0 <= kk < len(layers):
        raise QAPrunerError(f"Pruning layer K = {kk} is outside the model's {len(layers)} decoder layers.")
    if sensitivity_input not in ("residual", "normed"):
        raise QAPrunerError(f"sensitivity_input must be 'residual' or 'normed', got {sensitivity_input!r}.")
    b, length, d = inputs_embeds.shape
    if tuple(attention_mask.shape) != (b, length):
        raise QAPrunerError(f"attention_mask must have shape {(b, length)}, got {tuple(attention_mask.shape)}.")
    vp = visual_positions.to(inputs_embeds.device).long()
    if vp.dim() != 2 or vp.shape[0] != b or vp.numel() == 0:
        raise QAPrunerError(f"visual_positions must be (B, N) with B = {b}, got {tuple(visual_positions.shape)}.")
    if vp.min() < 0 or vp.max() >= length:
        raise QAPrunerError("visual_positions point outside the sequence.")
    n = vp.shape[1]
    attention_mask = attention_mask.to(inputs_embeds.device)
    pos = default_position_ids(attention_mask) if position_ids is None else position_ids.to(vp.device).long()
    pos = pos.expand(b, -1) if pos.shape[0] == 1 else pos

    hidden = inputs_embeds
    mask4d = additive_mask(attention_mask, hidden.dtype)
    pe = decoder.rotary_emb(hidden, pos)
    hidden = _run_layers(layers[:kk], hidden, mask4d, pos, pe)

    if pruner.config.is_noop or pruner.num_keep(n) >= n:
        keep_idx = torch.arange(n, device=vp.device).expand(b, -1).clone()
    else:
        fields = dict(ctx_extra or {})
        for f in ("visual", "llm_attn"):
            fields.pop(f, None)
        vis = _gather_rows(hidden, vp)
        if sensitivity_input == "normed":
            vis = _gather_rows(layers[kk].input_layernorm(hidden), vp)
        if callable(fields.get("matched_error")):
            fields["matched_error"] = fields["matched_error"](vis)
        llm_attn = None
        if "llm_attn" in pruner.needs:
            llm_attn = last_token_attention(layers[kk], hidden, mask4d, pe).gather(1, vp)
        ctx = PruneContext(visual=vis, llm_attn=llm_attn, **fields)
        keep_idx = pruner.select(ctx).to(vp.device)
        keep = torch.ones(b, length, dtype=torch.bool, device=vp.device)
        keep.scatter_(1, vp, False)
        keep.scatter_(1, vp.gather(1, keep_idx), True)
        new_len = length - (n - keep_idx.shape[1])
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]  # kept, original order
        hidden = _gather_rows(hidden, order)
        attention_mask = attention_mask.gather(1, order)
        pos = pos.gather(1, order)
        mask4d = additive_mask(attention_mask, hidden.dtype)
        pe = decoder.rotary_emb(hidden, pos)

    hidden = _run_layers(layers[kk:], hidden, mask4d, pos, pe)
    last = decoder.norm(hidden[:, -1:])
    return head(last)[:, 0], keep_idx


