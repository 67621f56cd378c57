"""qapruner: PTQ (down to W4A4) + quantization-aware vision-token pruning for LLaVA-family MLLMs."""

__version__ = "0.1.0"
