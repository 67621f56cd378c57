"""Preparing a model for a configuration: a quantized copy, calibrated through the real model on task
samples (image + question), so the language model sees visual tokens during calibration."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from ..models.features import FeatureCache
from ..models.llava import LlavaAdapter
from ..quant import QuantConfig, quantize_
from ..tasks import calibration_task
from ..tasks.base import Task, stratified_subset


@torch.no_grad()
def calibration_inputs(adapter: LlavaAdapter, task: Task, samples: int = 32, seed: int = 0,
                       batch_size: int = 8) -> list[dict]:
    """``samples`` stratified items as LLM inputs with all visual tokens: a list of ``model(**kw)`` kwargs."""
    items = stratified_subset(task.items, min(samples, len(task.items)), seed)
    cache = FeatureCache(adapter, task)
    out = []
    for s in range(0, len(items), batch_size):
        batch = items[s : s + batch_size]
        feats, _ = cache.get([it.image for it in batch])
        out.append(adapter.assemble([it.prompt for it in batch], adapter.project(feats)).as_kwargs())
    return out


def calibration_sources(task: Task | Sequence[Task], samples: int) -> list[tuple[Task, int]]:
    """Where calibration samples come from: each task's training split (``tasks.calibration_task``), the
    ``samples`` shared out evenly over the tasks (the first ones get the remainder)."""
    tasks = [task] if isinstance(task, Task) else list(task)
    return [(calibration_task(t), samples // len(tasks) + (i < samples % len(tasks))) for i, t in enumerate(tasks)]


def quantized_copy(adapter: LlavaAdapter, config: QuantConfig, task: Task | Sequence[Task], calib_samples: int = 32,
                   seed: int = 0, progress=None) -> tuple[LlavaAdapter, dict]:
    """A deep copy of the model quantized with ``config`` (the FP model stays usable) and timing info. A list of
    tasks calibrates one model on all of them (``compare`` with ``calibration = "shared"``)."""
    calib = None
    t0 = time.perf_counter()
    sources = calibration_sources(task, calib_samples) if config.needs_calibration else []
    if sources:
        calib = [b for src, n in sources if n for b in calibration_inputs(adapter, src, n, seed)]
    model = copy.deepcopy(adapter.model)
    track = None
    if progress is not None:  # quantize_ takes a ``track(iterable, total=, description=)`` callable
        track = progress.track if hasattr(progress, "track") else progress
    quantize_(model, config, calib=calib, progress=track)
    splits = [src.meta.get("split") if len(sources) == 1 else f"{src.name}:{src.meta.get('split')}:{n}"
              for src, n in sources]
    info = {"preset": config.preset, "calib_samples": calib_samples if calib else 0,
            "calib_task": (splits[0] if len(splits) == 1 else splits) if calib else None,
            "seconds": round(time.perf_counter() - t0, 2)}
    return adapter.with_model(model), info
