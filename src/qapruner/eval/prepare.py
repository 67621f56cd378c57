"""Preparing a model for a configuration: a quantized copy, calibrated through the real model on task
samples (image + question), so the language model sees visual tokens during calibration."""

from __future__ import annotations

import copy
import time

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


def quantized_copy(adapter: LlavaAdapter, config: QuantConfig, task: Task, calib_samples: int = 32,
                   seed: int = 0, progress=None) -> tuple[LlavaAdapter, dict]:
    """A deep copy of the model quantized with ``config`` (the FP model stays usable) and timing info."""
    calib = None
    t0 = time.perf_counter()
    calib_task = calibration_task(task) if config.needs_calibration else None
    if calib_task is not None:
        calib = calibration_inputs(adapter, calib_task, calib_samples, seed)
    model = copy.deepcopy(adapter.model)
    track = None
    if progress is not None:  # quantize_ takes a ``track(iterable, total=, description=)`` callable
        track = progress.track if hasattr(progress, "track") else progress
    quantize_(model, config, calib=calib, progress=track)
    info = {"preset": config.preset, "calib_samples": calib_samples if calib else 0,
            "calib_task": calib_task.meta.get("split") if calib else None,
            "seconds": round(time.perf_counter() - t0, 2)}
    return adapter.with_model(model), info
