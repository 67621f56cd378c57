"""In-LLM pruning location (FastV style): choose the visual tokens at the input of decoder layer K.

``prune_at_layer(adapter, inputs, pruner, ctx)`` runs layers 0..K-1 over the full (left-padded) sequence
through the adapter's decoder loop, scores the visual tokens (FastV's rule, as its public code does it: the
last position's head-averaged attention row *of layer K - 1*, i.e. the attention that layer computes on its own
input; computed explicitly, so SDPA stays in use for every layer), lets the pruner choose, drops the other
visual tokens from the hidden states entering layer K, mask and position ids, runs layers K..end and returns the
last position's logits. Kept tokens keep their original position ids after pruning (as FastV does), so RoPE still sees the
true image layout and the text after the image keeps its positions; the dropped ids leave gaps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qapruner.errors import QAPrunerError
from qapruner.models.llava import DecoderState, LlavaAdapter, LMInputs, gather_tokens
from qapruner.prune.context import PruneContext

if TYPE_CHECKING:  # the pruner calls in here (Pruner.at_layer); only its type is named
    from qapruner.prune.pruner import Pruner


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def last_token_attention(layer: nn.Module, state: DecoderState) -> Tensor:
    """Head-averaged softmax attention row of the LAST position at ``layer``: (B, L).

    Same arithmetic as eager attention: input_layernorm, q/k projections (full sequence, so activation
    quantizers see what they see in the real forward), optional q/k norms, RoPE, GQA repetition, scaling,
    additive mask, float32 softmax; then the mean over heads.
    """
    attn, hidden = layer.self_attn, state.hidden
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
    cos, sin = state.position_embeddings
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, hd)
    q = q * cos[:, :, -1:] + _rotate_half(q) * sin[:, :, -1:]
    k = k * cos + _rotate_half(k) * sin
    n_rep = q.shape[1] // k.shape[1]
    k = k if n_rep == 1 else k.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling + state.mask4d[:, :, -1:, :]
    p = torch.softmax(scores.float(), dim=-1)  # (B, H, 1, L)
    return p.mean(dim=1)[:, 0]


def prune_at_layer(adapter: LlavaAdapter, inputs: LMInputs, pruner: Pruner, ctx: PruneContext | None = None,
                   sensitivity_input: str = "residual") -> tuple[Tensor, Tensor]:
    """Prune visual tokens at layer ``pruner.config.layer_k``; return (last logits (B, V), keep_idx (B, k)).

    ``ctx``: the other context fields (grid, cls_attn, text_embeds, ...); ``matched_error`` may be a callable
    of the layer-K visual states. ``visual`` and ``llm_attn`` are set here: ``visual`` is the residual stream
    entering layer K (``sensitivity_input="residual"``, the in-LLM analogue of the projector outputs the
    pre-LLM location scores) or ``input_layernorm_K`` of it (``"normed"``, exactly what layer K's q/k/v
    activation quantizers see).
    """
    kk = pruner.config.layer_k
    if not 0 <= kk < adapter.num_layers:
        raise QAPrunerError(f"Pruning layer K = {kk} is outside the model's {adapter.num_layers} decoder layers.")
    if sensitivity_input not in ("residual", "normed"):
        raise QAPrunerError(f"sensitivity_input must be 'residual' or 'normed', got {sensitivity_input!r}.")
    vp = inputs.visual_positions
    b, n = vp.shape
    prune = not (pruner.config.is_noop or pruner.num_keep(n) >= n)
    wants_attn = prune and "llm_attn" in pruner.needs
    if wants_attn and kk < 1:
        raise QAPrunerError("FastV's score is the attention of layer K - 1: K must be at least 1.")
    state = adapter.decoder_state(inputs.embeds, inputs.mask, inputs.position_ids)
    state = adapter.run_layers(state, 0, kk - 1 if wants_attn else kk)
    llm_attn = None
    if wants_attn:  # the attention layer K - 1 computes on its input, then layer K - 1 itself
        llm_attn = last_token_attention(adapter.layer(kk - 1), state).gather(1, vp)
        state = adapter.run_layers(state, kk - 1, kk)

    if not prune:
        keep_idx = torch.arange(n, device=vp.device).expand(b, -1).clone()
    else:
        layer = adapter.layer(kk)
        states = layer.input_layernorm(state.hidden) if sensitivity_input == "normed" else state.hidden
        vis = gather_tokens(states, vp)
        base = ctx if ctx is not None else PruneContext(visual=vis)
        matched = base.matched_error(vis) if callable(base.matched_error) else base.matched_error
        keep_idx = pruner.select(replace(base, visual=vis, llm_attn=llm_attn, matched_error=matched)).to(vp.device)
        keep = torch.ones(state.mask.shape, dtype=torch.bool, device=vp.device)
        keep.scatter_(1, vp, False)
        keep.scatter_(1, vp.gather(1, keep_idx), True)
        new_len = keep.shape[1] - (n - keep_idx.shape[1])
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]  # kept, original order
        state = adapter.decoder_state(gather_tokens(state.hidden, order), state.mask.gather(1, order),
                                      state.position_ids.gather(1, order))

    state = adapter.run_layers(state, kk)
    return adapter.head(state.hidden[:, -1:]), keep_idx
