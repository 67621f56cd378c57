"""Tasks by name, registered by their loaders: ``@register_task("easy-vqa", train_split=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import QAPrunerError
from .base import Task


@dataclass(frozen=True)
class TaskInfo:
    name: str  # "easy-vqa", or "jsonl" for a task named "jsonl:PATH"
    load: Callable[[str], Task]  # split ("test" / "train"), or the PATH of a "NAME:PATH" task
    train_split: bool  # has a training split (calibration and training use it; else the task itself)
    takes_path: bool

    @property
    def usage(self) -> str:
        return f"{self.name}:PATH" if self.takes_path else self.name


TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, *, train_split: bool, takes_path: bool = False):
    def add(load):
        TASKS[name] = TaskInfo(name, load, train_split, takes_path)
        return load
    return add


def task_info(name: str) -> TaskInfo:
    base, sep, _ = name.partition(":")
    info = TASKS.get(base)
    if info is None or info.takes_path != bool(sep):
        raise QAPrunerError(f"Unknown task '{name}'; choose one of: {', '.join(t.usage for t in TASKS.values())}.")
    return info


def load_task(name: str, split: str = "test") -> Task:
    info = task_info(name)
    return info.load(name.partition(":")[2]) if info.takes_path else info.load(split)


def calibration_task(task: Task) -> Task:
    """Calibrate on the task's training split when it has one, else on the task itself (user data)."""
    return load_task(task.name, "train") if task_info(task.name).train_split else task
