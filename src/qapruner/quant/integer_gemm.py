"""The integer GEMM of a fake-quant W·A linear: the same quantized operands, multiplied as integers.

A ``QuantLinear`` with integer weights ``W = s_w ⊙ (Q_w − z_w)`` (per output channel) and quantized
activations ``X = s_x ⊙ (Q_x − z_x)`` (per token, or one static scale) computes ``X Wᵀ`` in fp32 from the
dequantized operands. The same product, factored:

    y = s_x ⊙ s_wᵀ ⊙ [ (Q_x − o) (Q_w − z_w)ᵀ + (o − z_x) · Σ_k (Q_w − z_w) ] + b

where ``o`` is an offset that puts the activation codes into int8 (0, or 128 for 8-bit asymmetric codes).
The bracket is an int8 × int8 → int32 GEMM (``torch._int_mm``, oneDNN's VNNI kernel on x86), **exact**; the
only roundings are the int32 → fp32 conversion (exact below 2^24: every W4A4 / W4A8 sum on the testbed, at
most 15·8·1536 resp. 255·8·1536) and the two products with the scales. The fp32 fake-quant path rounds every
dequantized operand and every partial sum instead, so the two differ in the last bits of the logits; the
paired accuracy difference over the same items is measured (docs/quantization.md, *Integer GEMM*).

Only layers whose grids allow it use it: integer weights per output channel (no groups), at most 8 bits
symmetric or 7 asymmetric; activations per token or per tensor, at most 8 bits. ``integer_gemm_refusal``
says in one sentence why a preset cannot.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QAPrunerError
from .config import QuantConfig
from .quantizer import int_range, minmax_qparams, quantize_int_fresh


def integer_gemm_refusal(config: QuantConfig | None) -> str | None:
    """Why ``config`` cannot run its linears as an integer GEMM, or None when it can."""
    if config is None or not config.act.enabled or not config.weight.enabled:
        what = "FP" if config is None else config.preset
        return f"--gemm integer multiplies quantized activations by quantized weights; {what} quantizes not both."
    w, a = config.weight, config.act
    if w.group_size is not None:
        return (f"--gemm integer needs one weight scale per output channel; {config.preset} has groups of "
                f"{w.group_size} inputs.")
    if w.bits > (8 if w.sym else 7):
        return f"--gemm integer holds weight codes in int8; {w.bits}-bit asymmetric weights do not fit."
    if a.granularity == "group":
        return f"--gemm integer needs one activation scale per token or per tensor; {config.preset} has groups."
    return None


class IntegerWeight(nn.Module):
    """A layer's weight codes as the int8 right operand of ``_int_mm``, with what the factored product needs."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        if codes.abs().max() > 127:
            raise QAPrunerError("Weight codes outside int8 cannot run as an integer GEMM.")
        self.register_buffer("codes_t", codes.to(torch.int8).t().contiguous(), persistent=False)  # (in, out)
        self.register_buffer("code_sum", codes.sum(dim=1).to(torch.int32), persistent=False)  # Σ_k (Q_w − z_w)
        self.register_buffer("scale", scale.reshape(1, -1).float(), persistent=False)  # s_w, (1, out)


def integer_weight(ql) -> IntegerWeight:
    """``ql``'s quantized weight as an :class:`IntegerWeight` (the grid its weight method recorded)."""
    if ql.weight_group_size is not None:
        raise QAPrunerError("An integer GEMM needs per-channel weight scales, not groups.")
    codes = ql.integer_weight() - ql.weight_zero.to(torch.int32)  # Q_w − z_w, (out, in)
    return IntegerWeight(codes, ql.weight_scale)


def integer_linear(x: torch.Tensor, act_quant, iw: IntegerWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """``y = Q_a(x) · Q(W)ᵀ + b`` through the factored integer product above; ``x`` in fp32."""
    c = act_quant.cfg
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if c.granularity == "tensor":
        scale, zero = act_quant.scale.to(x2.dtype), act_quant.zero.to(x2.dtype)
    else:
        scale, zero = minmax_qparams(x2, c.bits, c.sym, -1, c.clip_ratio)  # (M, 1) per token
    offset = 128 if int_range(c.bits, c.sym)[1] > 127 else 0  # 8-bit asymmetric codes 0..255 → −128..127
    q = quantize_int_fresh(x2, scale, zero, c.bits, c.sym)  # Q_x, as fake_quant computes it
    if offset:
        codes = q.sub_(offset).to(torch.int8)
    else:
        codes = q.sub_(zero).to(torch.int8)  # Q_x − z_x fits int8 (sym, or asym with ≤ 7 bits)
    acc = torch._int_mm(codes, iw.codes_t)  # (M, out) int32, exact
    if offset:
        acc += (offset - zero.to(torch.int32)) * iw.code_sum  # (o − z_x) · Σ_k (Q_w − z_w), exact in int32
    y = acc.to(x2.dtype).mul_(scale).mul_(iw.scale)
    if bias is not None:
        y += bias
    return y.reshape(*shape[:-1], y.shape[-1])


def use_integer_gemm(model: nn.Module, on: bool = True) -> int:
    """Switch every W·A ``QuantLinear`` of ``model`` to the integer GEMM (or back); returns how many switched."""
    from .quant_linear import QuantLinear

    n = 0
    for ql in model.modules():
        if not isinstance(ql, QuantLinear):
            continue
        if on and ql.weight.device.type != "cpu":
            raise QAPrunerError(f"--gemm integer runs on the CPU (torch._int_mm's CPU kernel); this model is on "
                                f"{ql.weight.device.type}: leave --gemm at float there.")
        if not on:
            ql.integer = None
            continue
        if not (ql.act_quant.cfg.enabled and ql.weight_quantized):
            continue
        ql.integer = integer_weight(ql)
        n += 1
    return n
