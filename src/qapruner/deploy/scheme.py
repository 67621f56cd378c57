"""Which quantization configs the compressed-tensors export can write, and their compressed-tensors scheme.

Supported (what compressed-tensors 0.20 expresses, stock transformers loads back exactly, and vLLM's
compressed-tensors loader maps to its W4A16 / W8A16 / W8A8-int8 kernels):

* weight-only, 4 or 8 bits, symmetric, per output channel or per group (``pack-quantized``: integers packed into
  int32, one scale per channel or group);
* W8A8: 8-bit symmetric per-channel weights with dynamic per-token 8-bit activations (``int-quantized``: int8
  weights, activation scales computed at run time; asymmetric or symmetric activations);
* RTN or GPTQ (its static groups stay contiguous, so no ``g_idx`` is needed), any clip search, SmoothQuant and
  the offline residual rotation (``rot``/``rrot`` with ``QuantConfig.online_hadamard=False``): all of these
  are folded into ordinary weights before export.

Everything else is refused with one sentence (:func:`check_exportable`).
"""

from __future__ import annotations

from ..errors import QAPrunerError
from ..quant.config import QuantConfig


def unsupported(cfg: QuantConfig) -> str | None:
    """What in ``cfg`` the export cannot write (a phrase), or None when it can."""
    w, a = cfg.weight, cfg.act
    if cfg.is_noop or not w.enabled:
        return "a preset without weight quantization (there are no integer weights to write)"
    if cfg.rotation is not None and cfg.online_hadamard:
        return (f"the online Hadamard transform that '-{'rot' if cfg.rotation == 'hadamard' else 'rrot'}' applies "
                "before o_proj and down_proj (transformers does not apply compressed-tensors transforms on load; "
                "--no-online-hadamard exports the offline rotation alone)")
    if cfg.kv_bits < 16:
        return f"KV-cache quantization (kv{cfg.kv_bits}: per-token dynamic KV scales have no compressed-tensors form)"
    if w.bits not in (4, 8):
        return f"{w.bits}-bit weights (the export writes 4- or 8-bit integer weights)"
    if not w.sym:
        return "asymmetric weights (asymw; the export writes symmetric integer weights)"
    if a.enabled:
        if a.bits != 8:
            return f"{a.bits}-bit activations (only 8-bit dynamic per-token activations are exported)"
        if a.granularity == "tensor":
            return "static activation scales (static)"
        if a.granularity == "group":
            return f"per-group activation scales (ag{a.group_size})"
        if a.clip_ratio != 1.0:
            return f"activation clipping (aclip{a.clip_ratio:g}; dynamic scales are plain min/max on load)"
        if w.bits != 8:
            return f"W{w.bits}A8 (4-bit weights with 8-bit activations; the export writes W4A16, W8A16 or W8A8)"
        if w.group_size is not None:
            return f"grouped weights with 8-bit activations (g{w.group_size}; W8A8 weights are per channel)"
    if cfg.include is not None:
        return "an include list (the export quantizes the language model's decoder linears only)"
    return None


def check_exportable(cfg: QuantConfig) -> None:
    """Raise a one-sentence :class:`QAPrunerError` unless the export can write ``cfg``."""
    what = unsupported(cfg)
    if what is not None:
        raise QAPrunerError(f"Preset {cfg.preset!r} cannot be exported to compressed-tensors: {what} is not supported.")


def ct_scheme(cfg: QuantConfig, group_size: int | None):
    """The compressed-tensors ``QuantizationScheme`` of ``cfg`` (targets ``Linear``; the export's ignore list
    picks the modules) and its format. ``group_size`` is the one the layers actually used (None = per channel)."""
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=cfg.weight.bits, type="int", symmetric=True, dynamic=False,
                               strategy="group" if group_size else "channel", group_size=group_size)
    acts = None
    if cfg.act.enabled:
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=cfg.act.sym, dynamic=True, strategy="token")
    fmt = CompressionFormat.int_quantized if acts is not None else CompressionFormat.pack_quantized
    return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts, format=fmt), fmt
