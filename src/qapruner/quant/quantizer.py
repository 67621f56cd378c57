"""Uniform integer fake-quantization: the grid math shared by weights, activations and the KV cache.

Everything is *simulated* quantization: the integer grid is computed exactly in floating point and the
dequantized value ``(q - z) * s`` is returned in the input dtype.

Conventions (one place, used everywhere):

* ``bits`` in 2..8 quantizes, ``16`` means "off" (identity).
* Symmetric: integer range ``[-2^(b-1), 2^(b-1) - 1]``, zero point 0, ``s = absmax / (2^(b-1) - 1)``
  (the absmax maps onto the largest *positive* level, so the grid is symmetric around 0 and the extra
  negative level is only reached by clipping; this is the GPTQ/QuaRot convention and matches the
  paper's "s = max|x| / 7" for INT4).
* Asymmetric: integer range ``[0, 2^b - 1]``, ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``;
  the range is first widened to contain 0 so that 0 is exactly representable.
* Rounding is round-to-nearest with ties to even (``torch.round``); there is no stochastic rounding.
* A zero range (all-zero row/group/token) gets ``s = 1`` so nothing divides by zero; it quantizes to 0.
* ``x / s`` is a true division (not a multiply by a reciprocal), so a value already on the grid,
  ``x = (q - z) * s``, round-trips exactly.
"""

from __future__ import annotations

import torch

from ..errors import QAPrunerError

VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def check_bits(bits: int, what: str = "bits") -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in VALID_BITS:
        raise QAPrunerError(f"{what} must be an integer in 2..8, or 16 for no quantization, not {bits!r}.")
    return bits


def int_range(bits: int, sym: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit grid."""
    if sym:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams_from_range(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool):
    """Scale and zero point (both tensors broadcastable like ``xmin``) for the range ``[xmin, xmax]``."""
    if sym:
        absmax = torch.maximum(xmin.abs(), xmax.abs())
        scale = absmax / (2 ** (bits - 1) - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.zeros_like(scale)
    else:
        xmin = torch.clamp(xmin, max=0)
        xmax = torch.clamp(xmax, min=0)
        scale = (xmax - xmin) / (2**bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize_int(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Integer codes (as floats) of ``x`` on the grid ``(scale, zero)``."""
    qmin, qmax = int_range(bits, sym)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the grid ``(scale, zero)``; ``bits >= 16`` returns ``x``."""
    if bits >= 16:
        return x
    if x.requires_grad or scale.requires_grad:
        return (quantize_int(x, scale, zero, bits, sym) - zero) * scale
    # the same operations in the same order, in place on one buffer: bit-identical, one allocation instead of six
    return quantize_int_fresh(x, scale, zero, bits, sym).sub_(zero).mul_(scale)


def quantize_int_fresh(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """``quantize_int`` computed in place on one new buffer (``x`` untouched): the codes fake_quant and the integer
    GEMM start from, bit for bit the same."""
    qmin, qmax = int_range(bits, sym)
    return torch.div(x, scale).round_().add_(zero).clamp_(qmin, qmax)


def minmax_qparams(x: torch.Tensor, bits: int, sym: bool, dim: int = -1, clip_ratio: float = 1.0):
    """Dynamic (scale, zero), one pair per slice along ``dim`` (reduced over ``dim``, kept as size 1)."""
    xmin = x.amin(dim=dim, keepdim=True)
    xmax = x.amax(dim=dim, keepdim=True)
    if clip_ratio != 1.0:  # (a product with 1.0 is exact: skipping it changes no bit)
        xmin, xmax = xmin * clip_ratio, xmax * clip_ratio
    return qparams_from_range(xmin, xmax, bits, sym)


def fake_quant_minmax(x: torch.Tensor, bits: int, sym: bool, dim: int = -1, clip_ratio: float = 1.0) -> torch.Tensor:
    """Dynamic fake-quant with one (scale, zero) per slice along ``dim`` (reduced over ``dim``)."""
    if bits >= 16:
        return x
    scale, zero = minmax_qparams(x, bits, sym, dim, clip_ratio)
    return fake_quant(x, scale, zero, bits, sym)


def fake_quant_groups(x: torch.Tensor, bits: int, sym: bool, group_size: int | None, clip_ratio: float = 1.0):
    """Dynamic fake-quant over the last dim, per row (``group_size`` None) or per group of ``group_size``."""
    if bits >= 16:
        return x
    d = x.shape[-1]
    if group_size is None or group_size <= 0 or group_size >= d:
        return fake_quant_minmax(x, bits, sym, -1, clip_ratio)
    if d % group_size:
        raise QAPrunerError(f"Group size {group_size} does not divide the channel count {d}.")
    xg = x.reshape(*x.shape[:-1], d // group_size, group_size)
    return fake_quant_minmax(xg, bits, sym, -1, clip_ratio).reshape(x.shape)


# ----------------------------------------------------------------------------------------------- weights

_CHUNK = 1 << 17
DEFAULT_CLIP_GRID = tuple(round(1.0 - 0.02 * i, 2) for i in range(26))  # 1.00, 0.98, ..., 0.50


def weight_qparams(
    w: torch.Tensor, bits: int, sym: bool, clip_search: bool = False, clip_grid=DEFAULT_CLIP_GRID,
    norm: float = 2.0, importance: torch.Tensor | None = None,
):
    """Per-row (scale, zero) of a 2-D ``w`` (rows = output channels or groups), shape ``(rows, 1)``.

    With ``clip_search`` the range of each row is shrunk by the ratio in ``clip_grid`` that minimises
    ``sum_j importance_j · |w_j - Q(w_j)|^norm`` for that row (grid search, as in GPTQ's ``mse`` option;
    ratio 1.0 is always a candidate so the search never does worse than plain min/max). ``importance``
    (broadcastable to ``w``; GPTQ passes ``diag(H)``, the mean squared input of each channel) makes the
    search activation-aware; without it every weight counts the same.
    """
    if clip_search and w.numel() > _CHUNK:
        # cache-sized row chunks: the grid search is memory-bound, chunking makes it ~5x faster on CPU
        rows = max(1, _CHUNK // w.shape[1])
        imp = None if importance is None else importance.expand_as(w)
        parts = [
            weight_qparams(c, bits, sym, True, clip_grid, norm, None if imp is None else imp[i:i + rows])
            for i, c in zip(range(0, w.shape[0], rows), w.split(rows))
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    xmin = w.amin(dim=1, keepdim=True)
    xmax = w.amax(dim=1, keepdim=True)
    scale, zero = qparams_from_range(xmin, xmax, bits, sym)
    if not clip_search:
        return scale, zero
    def error(s, z):
        e = (w - fake_quant(w, s, z, bits, sym)).abs()
        e = e * e if norm == 2.0 else e.pow(norm)
        return (e if importance is None else e * importance).sum(dim=1, keepdim=True)

    best = error(scale, zero)
    for ratio in clip_grid:
        if ratio >= 1.0:
            continue
        s, z = qparams_from_range(xmin * ratio, xmax * ratio, bits, sym)
        err = error(s, z)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def check_group_size(group_size: int | None, in_features: int) -> int | None:
    """``None``/0/-1 mean per output channel; otherwise the group size must divide ``in_features``."""
    if group_size is None or group_size in (0, -1):
        return None
    if not isinstance(group_size, int) or group_size < 1:
        raise QAPrunerError(f"Weight group size must be a positive integer, not {group_size!r}.")
    if group_size >= in_features:
        return None
    if in_features % group_size:
        raise QAPrunerError(
            f"Weight group size {group_size} does not divide in_features={in_features}; choose a divisor "
            "(e.g. 64 or 128 for hidden 576 / intermediate 1536) or per-channel."
        )
    return group_size


def quantize_weight_rtn(
    w: torch.Tensor, bits: int, sym: bool = True, group_size: int | None = None, clip_search: bool = False,
    return_qparams: bool = False,
):
    """Round-to-nearest fake-quant of a ``(out, in)`` weight, per output channel or per input-channel group.

    With ``return_qparams`` also the grid it used: ``(w_q, scale, zero)`` with ``scale``/``zero`` of shape
    ``(out, in // G)`` (``(out, 1)`` per channel), so that ``w_q = (q - zero) · scale`` for integers ``q``."""
    if bits >= 16:
        return (w, None, None) if return_qparams else w
    w = w.clone()  # a fresh, contiguous copy: weights loaded from a GGUF can sit in very slow storage
    out_f, in_f = w.shape
    g = check_group_size(group_size, in_f)
    w2 = w.reshape(-1, g) if g else w
    scale, zero = weight_qparams(w2, bits, sym, clip_search)
    wq = fake_quant(w2, scale, zero, bits, sym).reshape(out_f, in_f)
    if not return_qparams:
        return wq
    return wq, scale.reshape(out_f, -1), zero.reshape(out_f, -1)
