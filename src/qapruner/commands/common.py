"""Options shared by ``eval`` and ``compare``."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import QAPrunerError


GEMM_HELP = ("W·A presets: float (fp32 GEMM of the dequantized operands, default) or integer (the same codes in "
             "an exact int8 GEMM, scaled after: faster, equal up to fp32 rounding)")
SENSITIVITY_HELP = ("S^Q of the QA variant: paper (default: simulated INT4/G128 error and span, the paper's formula), "
                    "matched (the deployed quantizer's error), norm (the L2 norm of each projected token, the "
                    "authors' released code)")


RELEVANCE_HELP = ("CDPruner's instruction relevance: llm (default: visual tokens vs the LLM's embedding of the "
                  "question; the testbed has no text tower) or clip:MODEL (CDPruner's own: the CLIP model, local path "
                  "or hub id, whose vision tower the model uses, e.g. clip:openai/clip-vit-large-patch14-336 for "
                  "llava-1.5)")


def add_model_task_args(p) -> None:
    p.add_argument("--model", default="testbed", help="'testbed' (default: the v7 asset), 'testbed:v2' / 'testbed:v1' (earlier assets), 'testbed:FILE' (another projector/LoRA asset), a local llava-hf directory or a hub id")
    p.add_argument("--task", default="easy-vqa", help="easy-vqa (default) | fashion-mnist | jsonl:PATH | scienceqa-img")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a fixed seeded subset of N items, stratified by answer (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, calibration sample and random host")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--calib-samples", type=int, default=32, help="calibration items for GPTQ / static scales")
    p.add_argument("--calib-seed", type=int, default=None,
                   help="seed of the calibration sample alone (default: --seed): another quantized copy, same items")


def check_writable(path: str | Path) -> None:
    """Fail now, in one sentence, if ``path`` cannot be written (before any model is loaded)."""
    path = Path(path)
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise QAPrunerError(f"Cannot write {path}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK):
        raise QAPrunerError(f"Cannot write {path}: {parent} is not writable.")
