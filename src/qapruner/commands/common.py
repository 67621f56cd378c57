"""Options shared by ``eval`` and ``compare``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QAPrunerError


def add_model_task_args(p) -> None:
    p.add_argument("--model", default="testbed", help="'testbed' (default), 'testbed:ASSET' (another projector/LoRA asset), a local llava-hf directory or a hub id")
    p.add_argument("--task", default="easy-vqa", help="easy-vqa (default) | fashion-mnist | jsonl:PATH | scienceqa-img")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a fixed seeded subset of N items, stratified by answer (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, calibration sample and random host")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--calib-samples", type=int, default=32, help="calibration items for GPTQ / static scales")


def check_limit(limit) -> None:
    if limit is not None and limit <= 0:
        raise QAPrunerError(f"--limit must be a positive number of items, got {limit}.")


def write_json(path: str | Path, obj) -> None:
    """Write atomically, so an interrupted run never leaves a half-written summary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)
