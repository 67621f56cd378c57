"""Preparing a model for a configuration: a quantized copy, calibrated through the real model on task
samples (image + question), so the language model sees visual tokens during calibration.

Prune-aware calibration (``calib_prune``): the calibration samples are pruned by the same host, keep and QA
setting the model will run with, so GPTQ's Hessians and static activation scales see the token set the pruned
model sees at inference (docs/quantization.md, "Calibrating on the pruned token set")."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from collections.abc import Sequence

import torch

from ..models.features import FeatureCache
from ..errors import QAPrunerError
from ..models.llava import LlavaAdapter, gather_tokens
from ..prune import PruneConfig, Pruner
from ..quant import QuantConfig, quantize_
from ..tasks import calibration_task
from ..tasks.base import Task, stratified_subset


@torch.no_grad()
def calibration_inputs(adapter: LlavaAdapter, task: Task, samples: int = 32, seed: int = 0,
                       batch_size: int = 8, prune: PruneConfig | None = None) -> list[dict]:
    """``samples`` stratified items as LLM inputs: a list of ``model(**kw)`` kwargs. All visual tokens, or with
    ``prune`` the tokens that pruner keeps (exactly as the evaluation runner selects them)."""
    check_calib_prune(prune)
    pruner = Pruner(prune) if prune is not None and not prune.is_noop else None
    items = stratified_subset(task.items, min(samples, len(task.items)), seed)
    cache = FeatureCache(adapter, task)
    out = []
    for s in range(0, len(items), batch_size):
        batch = items[s : s + batch_size]
        feats, cls = cache.get([it.image for it in batch])
        visual = adapter.project(feats)
        if pruner is not None:
            ctx = adapter.prune_context(pruner, visual, cls, [it.question for it in batch], features=feats)
            visual = gather_tokens(visual, pruner.select(ctx))
        out.append(adapter.assemble([it.prompt for it in batch], visual).as_kwargs())
    return out


def check_calib_prune(prune: PruneConfig | None) -> None:
    """Prune-aware calibration runs the pruner before the model is quantized: hosts that prune inside the LLM
    (FastV) and the ``matched`` S^Q (which needs the quantized model) cannot, and are refused."""
    if prune is None:
        return
    if prune.host == "fastv":
        raise QAPrunerError("Calibrating on the pruned token set works for hosts that prune before the LLM; fastv "
                            "prunes inside it (calibrate it on dense inputs).")
    if prune.qa and prune.sensitivity == "matched":
        raise QAPrunerError("Calibrating on the pruned token set cannot use --sensitivity matched: its error needs "
                            "the quantized model that the calibration is building; use 'paper' or 'norm'.")


def calibration_sources(task: Task | Sequence[Task], samples: int) -> list[tuple[Task, int]]:
    """Where calibration samples come from: each task's training split (``tasks.calibration_task``), the
    ``samples`` shared out evenly over the tasks (the first ones get the remainder)."""
    tasks = [task] if isinstance(task, Task) else list(task)
    return [(calibration_task(t), samples // len(tasks) + (i < samples % len(tasks))) for i, t in enumerate(tasks)]


def quantized_copy(adapter: LlavaAdapter, config: QuantConfig, task: Task | Sequence[Task], calib_samples: int = 32,
                   seed: int = 0, progress=None, calib_prune: PruneConfig | None = None) -> tuple[LlavaAdapter, dict]:
    """A deep copy of the model quantized with ``config`` (the FP model stays usable) and timing info. A list of
    tasks calibrates one model on all of them (``compare`` with ``calibration = "shared"``); ``calib_prune``
    calibrates on the token sets that pruning configuration keeps."""
    calib = None
    t0 = time.perf_counter()
    sources = calibration_sources(task, calib_samples) if config.needs_calibration else []
    if sources:
        calib = [b for src, n in sources if n for b in calibration_inputs(adapter, src, n, seed, prune=calib_prune)]
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
    if calib and calib_prune is not None:
        info["calib_prune"] = asdict(calib_prune)
    return adapter.with_model(model), info
