"""Preparing a model for a configuration: a quantized copy, calibrated through the real model on task
samples (image + question), so the language model sees visual tokens during calibration."""

from __future__ import annotations

import copy
import time

import torch

from ..models.adapter import image_token_id, pad_left, project, splice_visual, tokenize_with_visual, user_turn
from ..models.features import FeatureCache
from ..models.registry import LoadedModel
from ..tasks import load_task
from ..tasks.base import Task, stratified_subset


def calibration_task(task: Task) -> Task:
    """Calibrate on the task's training split when it has one, else on the task itself (user data)."""
    if task.name in ("easy-vqa", "fashion-mnist", "scienceqa-img"):
        return load_task(task.name, "train")
    return task


@torch.no_grad()
def calibration_inputs(loaded: LoadedModel, task: Task, samples: int = 32, seed: int = 0,
                       batch_size: int = 8) -> list[dict]:
    """``samples`` stratified items as LLM inputs with all visual tokens: a list of ``model(**kw)`` kwargs."""
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    items = stratified_subset(task.items, min(samples, len(task.items)), seed)
    cache = FeatureCache(model, loaded.processor, task, loaded.key)
    out = []
    for s in range(0, len(items), batch_size):
        batch = items[s : s + batch_size]
        feats, _ = cache.get([it.image for it in batch])
        visual = project(model, feats.to(device))
        rows = [tokenize_with_visual(tok, user_turn(loaded.processor, it.prompt), image_token_id(model),
                                     visual.shape[1]) for it in batch]
        ids, mask = pad_left(rows, tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        out.append({"inputs_embeds": splice_visual(model, ids, visual), "attention_mask": mask,
                    "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})
    return out


def quantized_copy(loaded: LoadedModel, preset: str, task: Task, calib_samples: int = 32,
                   seed: int = 0, progress=None) -> tuple[LoadedModel, dict]:
    """A deep copy of ``loaded`` quantized with ``preset`` (the FP model stays usable) and timing info."""
    from ..quant import QuantConfig, quantize_

    config = QuantConfig.from_preset(preset)
    calib = None
    t0 = time.perf_counter()
    if config.needs_calibration:
        calib = calibration_inputs(loaded, calibration_task(task), calib_samples, seed)
    model = copy.deepcopy(loaded.model)
    track = None
    if progress is not None:  # quantize_ takes a ``track(iterable, total=, description=)`` callable
        track = progress.track if hasattr(progress, "track") else progress
    quantize_(model, config, calib=calib, progress=track)
    info = {"preset": preset, "calib_samples": calib_samples if calib else 0,
            "calib_task": calibration_task(task).meta.get("split") if calib else None,
            "seconds": round(time.perf_counter() - t0, 2)}
    return LoadedModel(model, loaded.processor, loaded.key, loaded.name, loaded.grid), info
