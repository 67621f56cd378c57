"""Tasks by name: ``easy-vqa``, ``fashion-mnist``, ``jsonl:PATH``, ``scienceqa-img``."""

from __future__ import annotations

from ..errors import QAPrunerError
from .base import Item, Task

TASK_NAMES = ("easy-vqa", "fashion-mnist", "jsonl:PATH", "scienceqa-img")


def load_task(name: str, split: str = "test") -> Task:
    if name == "easy-vqa":
        from .easy_vqa import load_easy_vqa
        return load_easy_vqa(split)
    if name == "fashion-mnist":
        from .fashion_mnist import load_fashion_mnist
        return load_fashion_mnist(split)
    if name.startswith("jsonl:"):
        from .jsonl import load_jsonl
        return load_jsonl(name[len("jsonl:"):])
    if name == "scienceqa-img":
        from .scienceqa import load_scienceqa_img
        return load_scienceqa_img(split)
    raise QAPrunerError(f"Unknown task '{name}'; choose one of: {', '.join(TASK_NAMES)}.")


__all__ = ["Item", "Task", "load_task", "TASK_NAMES"]
