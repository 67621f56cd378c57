"""qapruner: PTQ (down to W4A4) + quantization-aware vision-token pruning for LLaVA-family MLLMs."""

__version__ = "0.1.0"

import logging as _logging

# torchao (real kernels, and imported by transformers when installed) warns on import about its CUDA-only
# extensions; on a CPU machine that is noise, not a problem.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
