"""Round-to-nearest weight quantization (the baseline weight method): see ``quantize_weight_rtn``."""

from .quantizer import quantize_weight_rtn

__all__ = ["quantize_weight_rtn"]
