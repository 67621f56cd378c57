"""SmoothQuant (Xiao et al., 2022): migrate activation outliers into the weights, calibrated.

For a linear reading activations X with per-input-channel absmax ``a_j`` (over calibration tokens) and
weight column absmax ``w_j`` (over all linears reading X), ``s_j = a_j^α / w_j^(1−α)``; X is divided by s
and the weight columns multiplied by s — exactly, by folding ``1/s`` into whatever produces X:

* q/k/v input  ← input_layernorm scale;         gate/up input ← post_attention_layernorm scale;
* down_proj input ← up_proj output rows (``silu(gate) · up`` is linear in ``up``);
* o_proj input ← v_proj output rows (attention is linear in V); with grouped-query attention the factor is
  shared by the query heads of one KV head (max over the group).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.parts import LMParts


@torch.no_grad()
def collect_input_absmax(parts: LMParts, calib: list[dict], names=("q_proj", "o_proj", "gate_proj", "down_proj")):
    """Per-channel absmax of the inputs of the given linears of every decoder layer (one calib pass)."""
    stats: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(parts.layers):
        for name in names:
            mod = layer.self_attn.get_submodule(name) if name in ("q_proj", "o_proj") else layer.mlp.get_submodule(name)

            def hook(m, args, key=(i, name)):
                a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                stats[key] = a if key not in stats else torch.maximum(stats[key], a)

            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        for kw in calib:
            kw = dict(kw)
            kw.setdefault("use_cache", False)
            parts.model(**kw)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _factors(act: torch.Tensor, linears: list[nn.Module], alpha: float) -> torch.Tensor:
    w = torch.stack([l.weight.detach().abs().amax(0).float() for l in linears]).amax(0)
    s = act.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _scale_cols(lin: nn.Module, s: torch.Tensor) -> None:
    lin.weight.data = (lin.weight.data.double() * s.double()[None, :]).to(lin.weight.dtype)


def _scale_rows(lin: nn.Module, inv: torch.Tensor) -> None:
    lin.weight.data = (lin.weight.data.double() * inv.double()[:, None]).to(lin.weight.dtype)
    if lin.bias is not None:
        lin.bias.data = (lin.bias.data.double() * inv.double()).to(lin.bias.dtype)


@torch.no_grad()
def smooth_model(parts: LMParts, calib: list[dict], alpha: float = 0.5) -> None:
    stats = collect_input_absmax(parts, calib)
    cfg = parts.text_config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    for i, layer in enumerate(parts.layers):
        a, m = layer.self_attn, layer.mlp
        # q/k/v
        s = _factors(stats[(i, "q_proj")], [a.q_proj, a.k_proj, a.v_proj], alpha)
        layer.input_layernorm.weight.data = (layer.input_layernorm.weight.data.double() / s.double()).to(
            layer.input_layernorm.weight.dtype)
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            _scale_cols(lin, s)
        # gate/up
        s = _factors(stats[(i, "gate_proj")], [m.gate_proj, m.up_proj], alpha)
        layer.post_attention_layernorm.weight.data = (
            layer.post_attention_layernorm.weight.data.double() / s.double()).to(layer.post_attention_layernorm.weight.dtype)
        for lin in (m.gate_proj, m.up_proj):
            _scale_cols(lin, s)
        # down_proj via up_proj rows
        s = _factors(stats[(i, "down_proj")], [m.down_proj], alpha)
        _scale_rows(m.up_proj, 1.0 / s)
        _scale_cols(m.down_proj, s)
        # o_proj via v_proj rows, shared over the query heads of one KV head
        hd = a.o_proj.in_features // n_heads
        s = _factors(stats[(i, "o_proj")], [a.o_proj], alpha)
        s_kv = s.reshape(n_kv, n_heads // n_kv, hd).amax(1)  # (n_kv, hd)
        _scale_rows(a.v_proj, 1.0 / s_kv.reshape(-1))
        _scale_cols(a.o_proj, s_kv[:, None, :].expand(n_kv, n_heads // n_kv, hd).reshape(-1))
