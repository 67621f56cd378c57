"""The kept-token gallery of a compare report: which items it shows (``GalleryPlan``), and its stored data
(``gallery/data.json`` and the images as the vision tower saw them), keyed so a rerun recomputes it only when
something it depends on changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_json
from ..tasks.base import Task
from .config import CompareConfig
from .grid import slug


@dataclass
class GalleryPlan:
    task: str
    quant: str
    host: str
    keep: float
    uids: list[str] = field(default_factory=list)


def gallery_plan(cfg: CompareConfig, tasks: dict[str, Task]) -> GalleryPlan | None:
    """The first task and preset, CDPruner if swept (the paper's host) else the first host, at the paper keep;
    the first ``cfg.gallery`` items of the subset that show distinct images."""
    if cfg.gallery <= 0:
        return None
    task = tasks[cfg.tasks[0]]
    host = "cdpruner" if "cdpruner" in cfg.hosts else cfg.hosts[0]
    seen, uids = set(), []
    for it in task.items:
        if it.image not in seen:
            seen.add(it.image)
            uids.append(it.uid)
        if len(uids) == cfg.gallery:
            break
    return GalleryPlan(cfg.tasks[0], cfg.quant[0], host, cfg.paper_keep, uids)


def model_grid(loaded) -> list[int]:
    """The model's patch grid (rows, columns), stored with the gallery for drawing; (0, 0) when it has none."""
    return list(getattr(loaded, "grid", (0, 0)))


def gallery_key(plan: GalleryPlan, cfg: CompareConfig) -> dict:
    """Everything the stored gallery data depends on."""
    return {"task": plan.task, "quant": plan.quant, "uids": plan.uids, "model": cfg.model,
            "sensitivity": cfg.gallery_sensitivity, "sens_bits": cfg.sens_bits, "sens_group_size": cfg.sens_group_size}


def gallery_up_to_date(path: Path, plan: GalleryPlan, cfg: CompareConfig) -> bool:
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("key") == gallery_key(plan, cfg)
    except json.JSONDecodeError:
        return False


def save_gallery(path: Path, plan, cfg, data: dict, items, grid) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for it in items:
        d = data[it.uid]
        name = f"view_{slug(it.uid)}.png"
        Image.fromarray(d["image"]).save(path.parent / name)
        entries.append({"uid": it.uid, "image_file": name, "question": it.question, "answer": it.answer,
                        "sq": [round(float(x), 5) for x in d["sq"]]})
    write_json(path, {"key": gallery_key(plan, cfg), "grid": grid, "items": entries})
