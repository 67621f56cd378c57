"""Post-training quantization engine (simulated / fake quantization, fp32).

    from qapruner.quant import quantize_, QuantConfig
    quantize_(model, QuantConfig.from_preset("w4a4-rot-gptq"), calib=[{"input_ids": ids}, ...])

See docs/quantization.md for the preset grammar, defaults and measured perplexities.
"""

from .api import activation_error, quantize_, select_targets
from .config import ActQuantConfig, GPTQConfig, QuantConfig, WeightQuantConfig, parse_preset, to_preset
from .quant_linear import ActQuantizer, QuantLinear

__all__ = [
    "quantize_", "activation_error", "select_targets", "QuantConfig", "WeightQuantConfig",
    "ActQuantConfig", "GPTQConfig", "parse_preset", "to_preset", "QuantLinear", "ActQuantizer",
]
