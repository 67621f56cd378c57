"""The plan line ``compare`` logs before it starts: how much work the unfinished configurations are."""

from __future__ import annotations

from .config import CompareConfig
from .grid import model_key

# Rough costs on 2 CPU cores with the testbed, measured in the demo: ~0.75 s per item with all 256 visual tokens,
# ~0.2 s at keep 12.5 % (the prefill scales with the kept tokens), ~130-150 s per GPTQ run; a plan line states
# them so that nobody starts a many-hour grid by accident.
SECONDS_PER_ITEM_FIXED = 0.15
SECONDS_PER_ITEM_PER_KEEP = 0.6
SECONDS_PER_CALIBRATION = 150.0


def plan_line(todo, tasks: dict, cfg: CompareConfig, backend) -> str:
    items = sum(len(tasks[r.task].items) for r in todo)
    calibrations = len({model_key(r, cfg, backend.calibrates(r.quant)) for r in todo if r.quant})
    est = sum(len(tasks[r.task].items) * (SECONDS_PER_ITEM_FIXED + SECONDS_PER_ITEM_PER_KEEP * (r.keep or 1.0))
              for r in todo) + calibrations * SECONDS_PER_CALIBRATION
    return (f"plan: {len(todo)} configurations × {items // max(1, len(todo))} items on average = {items} item "
            f"evaluations, {calibrations} quantized model(s); roughly {est / 60:.0f} min on 2 CPU cores with the "
            "testbed (much less on a GPU)")
