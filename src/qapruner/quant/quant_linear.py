"""``QuantLinear``: a linear layer with fake-quantized weights, an optional online input transform
(Hadamard) and an activation quantizer on its input; and ``ActQuantizer``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QAPrunerError
from .config import ActQuantConfig
from .integer_gemm import integer_linear
from .quantizer import fake_quant, fake_quant_groups, qparams_from_range

# candidate clip ratios for static (per-tensor) scales: chosen by MSE on the calibration activations
STATIC_CLIP_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)


class ActQuantizer(nn.Module):
    """Activation fake-quantizer over the last dim.

    * ``token``: dynamic, one scale per token (row); ``group``: dynamic, per token and group of channels.
    * ``tensor``: static, one scale for the whole tensor, calibrated: pass 1 (``observe="range"``) records the
      min/max over the calibration data, pass 2 (``observe="mse"``) accumulates the squared error for each
      candidate clip ratio in ``STATIC_CLIP_GRID`` (times ``clip_ratio``), ``finish_calibration`` keeps the best.
    While observing, the input passes through unquantized.
    """

    def __init__(self, cfg: ActQuantConfig):
        super().__init__()
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.observe: str | None = None
        self.register_buffer("scale", torch.ones(()), persistent=True)
        self.register_buffer("zero", torch.zeros(()), persistent=True)
        self.calibrated = False
        self._min = self._max = None
        self._err = None

    # --------------------------------------------------------------- calibration (static scales)
    def _grid(self):
        return [r * self.cfg.clip_ratio for r in STATIC_CLIP_GRID]

    def _observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.observe == "range":
            mn, mx = x.min(), x.max()
            self._min = mn if self._min is None else torch.minimum(self._min, mn)
            self._max = mx if self._max is None else torch.maximum(self._max, mx)
        elif self.observe == "mse":
            errs = []
            for r in self._grid():
                s, z = qparams_from_range(self._min * r, self._max * r, self.cfg.bits, self.cfg.sym)
                errs.append((x - fake_quant(x, s, z, self.cfg.bits, self.cfg.sym)).pow(2).sum())
            errs = torch.stack(errs)
            self._err = errs if self._err is None else self._err + errs

    def finish_calibration(self) -> None:
        if self._min is None:
            raise QAPrunerError("A static activation quantizer saw no calibration data; the calibration inputs never reached it.")
        grid = self._grid()
        r = grid[int(torch.argmin(self._err))] if self._err is not None else self.cfg.clip_ratio
        s, z = qparams_from_range(self._min * r, self._max * r, self.cfg.bits, self.cfg.sym)
        self.scale.copy_(s)
        self.zero.copy_(z)
        self.clip = r
        self.calibrated = True
        self.observe = None
        self._min = self._max = self._err = None

    # --------------------------------------------------------------- forward
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` regardless of the ``enabled`` switch (used for error measurements)."""
        c = self.cfg
        if c.bits >= 16:
            return x
        if c.granularity == "tensor":
            if not self.calibrated:
                raise QAPrunerError("Static activation scales are used before calibration; pass calib= to quantize_.")
            return fake_quant(x, self.scale.to(x.dtype), self.zero.to(x.dtype), c.bits, c.sym)
        group = c.group_size if c.granularity == "group" else None
        return fake_quant_groups(x, c.bits, c.sym, group, c.clip_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe is not None:
            self._observe(x)
            return x
        if not self.enabled:
            return x
        return self.quantize(x)

    def extra_repr(self) -> str:
        c = self.cfg
        g = f", group={c.group_size}" if c.granularity == "group" else ""
        return f"bits={c.bits}, sym={c.sym}, {c.granularity}{g}, clip={c.clip_ratio}"


class QuantLinear(nn.Module):
    """``y = Q_w(W) · Q_a(T(x)) + b`` where T is an optional online transform (e.g. :class:`OnlineHadamard`).

    ``weight`` holds the *fake-quantized* weight once a weight method ran (``weight_quantized`` tells).
    """

    def __init__(self, linear: nn.Linear, act_cfg: ActQuantConfig, input_transform: nn.Module | None = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_transform = input_transform
        self.act_quant = ActQuantizer(act_cfg)
        self.weight_quantized = False
        self.wbits = 16
        # the integer grid of the quantized weight (set by the weight method; for export): one (scale, zero)
        # per output channel (shape (out, 1)) or per channel and group of ``weight_group_size`` inputs
        self.register_buffer("weight_scale", None, persistent=False)
        self.register_buffer("weight_zero", None, persistent=False)
        self.weight_group_size: int | None = None
        self.integer = None  # an integer_gemm.IntegerWeight when switched to the integer GEMM (use_integer_gemm)

    def set_quantized_weight(self, weight: torch.Tensor, bits: int, scale: torch.Tensor | None = None,
                             zero: torch.Tensor | None = None, group_size: int | None = None) -> None:
        """Install the (fake-)quantized weight a weight method computed, and record its bit width and, when
        given, its grid: ``weight = (q - zero) · scale`` with integers ``q``, ``scale``/``zero`` of shape
        ``(out, 1)`` (per channel) or ``(out, in // group_size)``."""
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise QAPrunerError(f"Quantized weight has shape {tuple(weight.shape)}, expected {tuple(self.weight.shape)}.")
        if scale is not None:
            groups = 1 if group_size is None else self.in_features // group_size
            if tuple(scale.shape) != (self.out_features, groups) or (zero is not None and zero.shape != scale.shape):
                raise QAPrunerError(f"Weight scales of shape {tuple(scale.shape)} do not fit a {self.out_features}x"
                                    f"{self.in_features} weight with group size {group_size}.")
        self.weight.data = weight.to(self.weight.dtype)
        self.weight_quantized, self.wbits = True, bits
        self.weight_scale = None if scale is None else scale.detach().clone()
        self.weight_zero = None if scale is None else (torch.zeros_like(self.weight_scale) if zero is None
                                                       else zero.detach().to(self.weight_scale.dtype).clone())
        self.weight_group_size = group_size if scale is not None else None
        self.integer = None  # a new weight: an earlier integer copy no longer holds it

    def integer_weight(self) -> torch.Tensor:
        """The integer codes ``q`` of the quantized weight (int32, shape (out, in)): ``round(w / s) + z`` on the
        recorded grid. Raises if the weight method recorded no grid."""
        if self.weight_scale is None:
            raise QAPrunerError("This layer's weight method recorded no quantization grid (scales).")
        g = self.weight_group_size or self.in_features
        s = self.weight_scale.repeat_interleave(g, dim=1).to(torch.float64)
        z = self.weight_zero.repeat_interleave(g, dim=1).to(torch.float64)
        return (torch.round(self.weight.detach().to(torch.float64) / s) + z).to(torch.int32)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_transform(x) if self.input_transform is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform_input(x)
        aq = self.act_quant
        if self.integer is not None and aq.enabled and aq.observe is None and not x.requires_grad:
            return integer_linear(x, aq, self.integer, self.bias)
        return F.linear(aq(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, wbits={self.wbits}, bias={self.bias is not None}"
