"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) as 10-way lettered multiple choice."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QAPrunerError
from .registry import register_task
from .base import LETTERS, MC_ANSWER, Item, Task

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
QUESTION = "What is the item of clothing in the image?"


@lru_cache(maxsize=4)
def _read(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "t10k" if split == "test" else "train"
    images, labels = ROOT / f"{prefix}-images-idx3-ubyte.gz", ROOT / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise QAPrunerError(
            f"Fashion-MNIST is not installed ({images} missing); run: apt-get install -y dataset-fashion-mnist")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def fashion_prompt() -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(CLASSES))
    return f"{QUESTION}\n{options}\n{MC_ANSWER}"


@register_task("fashion-mnist", train_split=True)
def load_fashion_mnist(split: str = "test") -> Task:
    x, y = _read(split)
    prompt, letters = fashion_prompt(), tuple(LETTERS[: len(CLASSES)])
    items = [Item(uid=f"fashion-mnist/{split}/{i}", image=i, question=QUESTION, prompt=prompt, choices=letters,
                  answer=LETTERS[int(label)], kind="class") for i, label in enumerate(y)]
    return Task("fashion-mnist", items, len(x), lambda i: Image.fromarray(x[i]).convert("RGB"),
                cache_key=f"fashion-mnist-{split}", meta={"split": split, "source": "Debian dataset-fashion-mnist"})
