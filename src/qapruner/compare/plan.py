"""The plan line ``compare`` logs before it starts: how much work the unfinished configurations are."""

from __future__ import annotations

from .config import CompareConfig

# Rough costs on 2 CPU cores with the testbed (measured: ~0.25 s per item and configuration, ~150 s per GPTQ
# run); a plan line states them so that nobody starts a many-hour grid by accident.
SECONDS_PER_ITEM = 0.25
SECONDS_PER_CALIBRATION = 150.0


def plan_line(todo, tasks: dict, cfg: CompareConfig, backend) -> str:
    items = sum(len(tasks[r.task].items) for r in todo)
    quants = {r.quant for r in todo if r.quant}
    per_task = cfg.calibration == "per-task"
    calibrations = sum(len({r.task for r in todo if r.quant == q}) if backend.calibrates(q) and per_task else 1
                       for q in quants)
    est = items * SECONDS_PER_ITEM + calibrations * SECONDS_PER_CALIBRATION
    return (f"plan: {len(todo)} configurations × {items // max(1, len(todo))} items on average = {items} item "
            f"evaluations, {calibrations} quantized model(s); roughly {est / 60:.0f} min on 2 CPU cores with the "
            "testbed (much less on a GPU)")
