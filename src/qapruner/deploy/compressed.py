"""A linear that compressed-tensors loaded (packed, or decompressed) as the qapruner ``QuantLinear`` it stands for,
so that ``deploy.runtime.realize`` can give a loaded export its real kernels."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QAPrunerError
from ..quant.quant_linear import QuantLinear


def from_compressed(linear: nn.Linear) -> QuantLinear | None:
    """A linear that compressed-tensors loaded, packed or decompressed (a ``qapruner quantize`` export, or another
    compressed-tensors checkpoint), as the ``QuantLinear`` it stands for: the dequantized weight on its integer grid
    (``weight_scale``, ``weight_zero_point``: w = (q − zero)·scale, the same convention as ours) and the scheme's
    activation quantizer, so that ``realize`` gives it a real kernel. None for a linear compressed-tensors does not
    quantize. Its own forward (which fake-quantizes the input) is not carried over: the real layer replaces it."""
    from ..quant.config import ActQuantConfig

    scheme = getattr(linear, "quantization_scheme", None)
    w, a = (scheme.weights, scheme.input_activations) if scheme is not None else (None, None)
    if w is None:
        return None
    value = lambda x: getattr(x, "value", x)  # noqa: E731  (compressed-tensors' str enums)
    if value(w.type) != "int" or value(w.strategy) not in ("channel", "group") or w.dynamic:
        raise QAPrunerError(f"No real kernel here runs compressed-tensors {value(w.type)} weights with strategy "
                            f"'{value(w.strategy)}'; evaluate this checkpoint without --real.")
    if a is None:
        act = ActQuantConfig(bits=16)
    elif value(a.type) == "int" and value(a.strategy) == "token" and a.dynamic:
        act = ActQuantConfig(bits=a.num_bits, sym=bool(a.symmetric), granularity="token")
    else:
        raise QAPrunerError(f"No real kernel here runs compressed-tensors {a.num_bits}-bit {value(a.strategy)} "
                            f"activations (dynamic={a.dynamic}); evaluate this checkpoint without --real.")
    group = w.group_size if value(w.strategy) == "group" else None
    scale = linear.weight_scale.detach().float()
    zero = getattr(linear, "weight_zero_point", None)
    zero = torch.zeros_like(scale) if zero is None else zero.detach().float().reshape(scale.shape)
    weight = dense_weight(linear, w.num_bits, scale, zero, group)
    plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                      device=weight.device, dtype=weight.dtype)
    plain.weight.data = weight
    if linear.bias is not None:
        plain.bias.data.copy_(linear.bias.detach())
    ql = QuantLinear(plain, act)
    ql.set_quantized_weight(weight, w.num_bits, scale, zero, group)
    return ql


def dense_weight(linear: nn.Linear, bits: int, scale: torch.Tensor, zero: torch.Tensor, group: int | None):
    """The layer's float32 weight: as decompressed, or (still compressed: packed int4 in ``weight_packed``, int8
    in ``weight``) rebuilt from its integers, w = (q − zero)·scale, one layer at a time."""
    if "weight_packed" in linear._parameters:  # pack-quantized, never decompressed
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

        q = unpack_from_int32(linear.weight_packed.detach(), bits,
                              torch.Size([linear.out_features, linear.in_features])).float()
    elif linear.weight.dtype in (torch.int8, torch.int16, torch.int32):  # int-quantized, never decompressed
        q = linear.weight.detach().float()
    else:
        return linear.weight.detach().float().clone()
    g = group or linear.in_features
    return (q - zero.repeat_interleave(g, dim=1)) * scale.repeat_interleave(g, dim=1)


def compressed_names(model: nn.Module) -> list[str]:
    """The linears of ``model`` that compressed-tensors quantizes (a loaded export's decoder linears)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and getattr(getattr(m, "quantization_scheme", None), "weights", None)]
