"""A task is a list of items over a list of images, plus how to prompt and score them."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import QAPrunerError

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt
MC_ANSWER = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's MC prompt
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Item:
    uid: str            # stable id, used to resume and to pair configurations
    image: int          # index into the task's image list
    question: str       # the question as the user wrote it
    prompt: str         # the text of the user turn (question + options + answer instruction)
    choices: tuple[str, ...]  # candidate answers as the model should say them; empty = free-form
    answer: str         # the correct answer, one of choices when choices is non-empty
    kind: str = ""      # question type for per-type accuracy ("yes/no", "shape", "count", ...); "" = untyped


@dataclass
class Task:
    name: str
    items: list[Item]
    image_count: int
    load_image: Callable[[int], Image.Image]
    cache_key: str      # identifies the image list for the feature cache
    meta: dict = field(default_factory=dict)

    def subset(self, limit: int | None, seed: int = 0) -> "Task":
        """A fixed, seeded subset of ``limit`` items, stratified by answer (proportional allocation)."""
        if limit is not None and limit <= 0:
            raise QAPrunerError(f"--limit must be a positive number of items, got {limit}.")
        if limit is not None and limit > len(self.items):
            raise QAPrunerError(f"--limit {limit} exceeds the {len(self.items)} items of task '{self.name}'; "
                                "omit --limit to evaluate all of them.")
        if limit is None or limit == len(self.items):
            return self
        items = stratified_subset(self.items, limit, seed)
        meta = dict(self.meta, subset=f"{limit} of {len(self.items)} items, stratified by answer, seed {seed}")
        return Task(self.name, items, self.image_count, self.load_image, self.cache_key, meta)


    def blank(self) -> "Task":
        """The same questions about one blank (white) image: how much do the answers depend on the image?"""
        size = self.load_image(0).size
        items = [replace(it, image=0) for it in self.items]
        meta = dict(self.meta, image="blank white image")
        return Task(self.name, items, 1, lambda i: Image.new("RGB", size, (255, 255, 255)),
                    cache_key=f"blank-{size[0]}x{size[1]}", meta=meta)


def stratified_subset(items: list[Item], limit: int, seed: int) -> list[Item]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.answer].append(i)
    rng = np.random.default_rng(seed)
    total = len(items)
    # Largest-remainder apportionment so the subset has exactly `limit` items.
    keys = sorted(groups)
    quotas = {k: limit * len(groups[k]) / total for k in keys}
    take = {k: int(quotas[k]) for k in keys}
    for k in sorted(keys, key=lambda k: (-(quotas[k] - take[k]), k))[: limit - sum(take.values())]:
        take[k] += 1
    chosen: list[int] = []
    for k in keys:
        idx = np.array(groups[k])
        chosen.extend(rng.permutation(idx)[: take[k]].tolist())
    return [items[i] for i in sorted(chosen)]


def digest(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]
