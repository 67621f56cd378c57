"""Real kernels for a quantized model: swap the fake-quant linears for integer / low-precision execution.

``realize(adapter)`` (in place) runs the projector and the language model in bf16 and replaces each
``QuantLinear`` by a real layer:

* 4-bit weights, activations unquantized (W4A16): PyTorch's CPU int4 tinygemm kernel (the one torchao's
  ``Int4OpaqueTensor`` runs, called directly by ``Int4Linear``; bf16 activations) built from the *same integers*
  the weight method chose (RTN or GPTQ), not re-quantized. tinygemm stores unsigned codes u and a float zero: ``w = (u − 8)·s + z_f``; our
  grid is ``w = (q − zero)·s``, so ``u = q + c`` (c = 8 for symmetric codes in [−8, 7], else 0) and
  ``z_f = (8 − c − zero)·s``. The integers are exact; scales and zeros are rounded to bf16. Groups of 64 input channels (per-channel scales are
  repeated over the groups; 576 = 9·64 on the testbed). On CUDA the kernel is not available: bf16 instead.
* 8-bit weights with dynamic per-token 8-bit activations (W8A8): torchao's int8 dynamic-activation kernel
  (symmetric per-channel int8 weights = our grid when the preset's weights are symmetric; its activation
  scales are symmetric per token, ours may be asymmetric: the difference is measured, not assumed).
* Anything else that quantizes no activations (W8A16, …): bf16 with the dequantized weight.
* Every bf16 linear of the decoder layers (all of them for FP, the bf16 kind above) is then handed to oneDNN
  with its weight reordered once into oneDNN's blocked layout (``packed_bf16.PackedBf16Linear``), where the CPU has bf16
  matrix instructions (AVX-512 BF16 or AMX): a plain bf16 ``F.linear`` reorders the weight on every call.
* Activations quantized to other than 8 bits, or static / per-group activation scales: refused — no kernel
  here executes them; the simulation (fake-quant, fp32) is the honest way to evaluate those presets.

Online transforms (the Hadamard before ``down_proj`` of rotated presets) stay in front of the real layer.
A loaded ``qapruner quantize`` export takes the same path: its compressed-tensors linears become the
``QuantLinear`` they were exported from (``deploy.compressed``), one layer at a time.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import QAPrunerError
from ..quant.quant_linear import QuantLinear
from .compressed import compressed_names, from_compressed
from .packed_bf16 import pack_bf16_linears

INT4_GROUP = 64


class RealLinear(nn.Module):
    """An optional online input transform followed by a real-kernel linear."""

    def __init__(self, linear: nn.Module, transform: nn.Module | None):
        super().__init__()
        self.linear, self.transform = linear, transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.transform(x) if self.transform is not None else x)


def _torchao():
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it warns about CUDA-only extensions on import
    try:
        import torchao  # noqa: F401  (availability check)
    except ImportError:
        raise QAPrunerError("Real kernels need torchao: pip install torchao==0.18.0") from None


def kind_of(ql: QuantLinear) -> str:
    """Which real kernel ``ql`` maps to: "int4", "int8-dynamic" or "bf16"; raises when none does."""
    act = ql.act_quant.cfg
    if not act.enabled:
        if ql.wbits == 4 and ql.weight_scale is not None and ql.in_features % INT4_GROUP == 0:
            g = ql.weight_group_size
            if g is None or g % INT4_GROUP == 0:
                return "int4"
        return "bf16"
    if act.bits == 8 and act.granularity == "token" and ql.wbits == 8:
        return "int8-dynamic"
    raise QAPrunerError(f"No real kernel runs {ql.wbits}-bit weights with {act.bits}-bit {act.granularity} "
                        "activations; evaluate this preset with the simulation (without --real).")


def check_real(quant, preset: str | None) -> None:
    """Refuse, before anything is loaded, a preset (a ``QuantConfig`` or None for FP) no real kernel runs."""
    act = quant.act if quant is not None else None
    if act is not None and act.enabled and not (act.bits == 8 and act.granularity == "token" and quant.weight.bits == 8):
        raise QAPrunerError(f"--real runs FP, weight-only and W8A8 (dynamic per-token) presets; no kernel "
                            f"here executes {preset}. Evaluate it without --real (simulation).")


def _linear(ql: QuantLinear, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(ql.in_features, ql.out_features, bias=ql.bias is not None, device=ql.weight.device, dtype=dtype)
    lin.weight.data.copy_(ql.weight.detach())
    if ql.bias is not None:
        lin.bias.data.copy_(ql.bias.detach())
    return lin


class Int4Linear(nn.Module):
    """A linear layer on PyTorch's CPU int4 tinygemm op (``aten._weight_int4pack_mm_for_cpu``), called directly.

    torchao's ``Int4OpaqueTensor`` wraps the same op in a tensor subclass whose Python dispatch costs about 20 µs
    per call, as much as the matmul itself for a decode step of the testbed's 576-wide layers (measured: 41 µs
    through the subclass, 21 µs for the op, q_proj, one thread), 210 calls per token. The packed codes and the
    bf16 scales / zeros are buffers, so ``state_dict`` and ``.to()`` carry them."""

    def __init__(self, packed: torch.Tensor, scale_and_zero: torch.Tensor, in_features: int, out_features: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", packed)
        self.register_buffer("scale_and_zero", scale_and_zero)
        self.bias = nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, INT4_GROUP, self.scale_and_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def int4_linear(ql: QuantLinear) -> Int4Linear:
    """The layer's integer grid as a tinygemm int4 layer (exact integers, bf16 scales and zeros)."""
    from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

    q = ql.integer_weight()  # (out, in), w = (q - zero) * scale; q in [-8, 7] (symmetric) or [0, 15]
    g = ql.weight_group_size or ql.in_features
    c = 8 if int(q.min()) < 0 else 0  # tinygemm: w = (u - 8) * s + z_f with unsigned u = q + c
    u = q + c
    if int(u.min()) < 0 or int(u.max()) > 15:
        raise QAPrunerError("The layer's integer codes do not fit 4 bits; it is not a 4-bit weight.")
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1)
    rep = g // INT4_GROUP
    scale = ql.weight_scale.repeat_interleave(rep, dim=1)
    zf = (8 - c - ql.weight_zero.repeat_interleave(rep, dim=1)) * scale  # so that (u - 8) s + z_f = (q - zero) s
    scale, zf = scale.to(torch.bfloat16), zf.to(torch.bfloat16)
    return Int4Linear(packed, pack_tinygemm_scales_and_zeros(scale, zf, torch.bfloat16), ql.in_features,
                      ql.out_features, ql.bias)


def realize_linear(ql: QuantLinear, dtype: torch.dtype = torch.bfloat16) -> RealLinear:
    kind = kind_of(ql)
    if kind == "int4" and ql.weight.device.type != "cpu":
        kind = "bf16"
    if kind == "int4":
        lin = int4_linear(ql)
    else:
        lin = _linear(ql, dtype)
    if kind == "int8-dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        wrapper = nn.Sequential(lin)
        quantize_(wrapper, Int8DynamicActivationInt8WeightConfig())
        lin = wrapper[0]
    transform = ql.input_transform
    if transform is not None:
        transform = transform.to(dtype)
    return RealLinear(lin, transform)


def _remove_ct_dispatch(model: nn.Module) -> None:
    """compressed-tensors dispatches a loaded checkpoint's modules through its offloading wrapper, which moves
    tensors on every attribute access (measured: a W4A16 export decoded at 34-36 tok/s against 42-44 for the same
    model quantized in memory, with identical kernels). The real model does not need it: everything is on one
    device."""
    from compressed_tensors.offload.dispatch import remove_dispatch

    remove_dispatch(model)
    if hasattr(model, "ct_decompress_hook"):  # nothing is left to decompress
        model.ct_decompress_hook.remove()
        del model.ct_decompress_hook


def realize(adapter, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Swap every ``QuantLinear`` of the adapter's model (and every compressed-tensors linear of a loaded export,
    ``from_compressed``) for its real kernel and run the projector and the language model in ``dtype`` (in
    place); pack the decoder layers' remaining bf16 linears for oneDNN. Returns
    how many layers took each kernel ("bf16" counts quantized layers run as bf16; "bf16-packed" every packed
    linear, those included)."""
    _torchao()
    model = adapter.model
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    names += compressed_names(model)  # a loaded export: each linear as the QuantLinear it was exported from
    kinds, real = [], []
    for name in names:  # the model is not changed here: a refusal leaves it as it was
        ql = model.get_submodule(name)
        ql = ql if isinstance(ql, QuantLinear) else from_compressed(ql)  # one dense layer at a time
        kinds.append(kind_of(ql))
        real.append(realize_linear(ql, dtype))  # from the fp32 grid, before the cast
    for name in names:  # the fake-quant layers leave before the cast, so only real layers remain
        model.set_submodule(name, nn.Identity())
    adapter.cast(dtype)
    for name, layer in zip(names, real):
        model.set_submodule(name, layer)
    if getattr(model, "hf_quantizer", None) is not None:  # a loaded export: drop compressed-tensors' dispatch
        _remove_ct_dispatch(model)
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    packed = pack_bf16_linears(adapter.parts.layers) if dtype == torch.bfloat16 else 0
    return dict(counts, **{"bf16-packed": packed}) if packed else counts
