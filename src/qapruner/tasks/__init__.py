"""Tasks by name: ``easy-vqa``, ``fashion-mnist``, ``shapes``, ``jsonl:PATH``, ``scienceqa-img`` (each module registers
its loader; the import order below is the order they are listed in)."""

from __future__ import annotations

from . import easy_vqa, fashion_mnist, shapes, jsonl, scienceqa  # noqa: F401  (registers the tasks)
from .base import Item, Task
from .registry import TASKS, calibration_task, load_task, register_task, task_info

__all__ = ["Item", "Task", "TASKS", "calibration_task", "load_task", "register_task", "task_info"]
