"""qapruner: PTQ (down to W4A4) + quantization-aware vision-token pruning for LLaVA-family MLLMs."""

__version__ = "0.1.0"

import logging as _logging

# torchao (real kernels, and imported by transformers when installed) warns on import about its CUDA-only
# extensions; on a CPU machine that is noise, not a problem.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
# torchao 0.18 registers two Enums as pytree constants, which torch 2.13 deprecates with a warning on every import.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
