"""ScienceQA-IMG for users who have the dataset locally (Hugging Face ``datasets`` layout of
``derek-thomas/ScienceQA``: parquet files ``data/<split>-*.parquet``), asked with LLaVA-1.5's protocol:
``<question>\\nContext: <hint>\\nA. ..\\nB. ..\\nAnswer with the option's letter from the given choices directly.``
Only questions with an image are kept (the IMG subset: 2,017 of the 4,241 test questions)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from ..errors import QAPrunerError
from ..paths import cache_dir
from .registry import register_task
from .base import LETTERS, MC_ANSWER, Item, Task


def scienceqa_root() -> Path:
    return Path(os.environ.get("QAPRUNER_SCIENCEQA", cache_dir() / "scienceqa")).expanduser()


@register_task("scienceqa-img", train_split=True)
def load_scienceqa_img(split: str = "test") -> Task:
    root = scienceqa_root()
    files = sorted(root.glob(f"data/{split}-*.parquet")) + sorted(root.glob(f"{split}-*.parquet"))
    if not files:
        raise QAPrunerError(
            f"ScienceQA is not available locally: no '{split}-*.parquet' under {root} (download derek-thomas/"
            "ScienceQA there, or point QAPRUNER_SCIENCEQA at it).")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QAPrunerError("Reading ScienceQA needs pyarrow: pip install pyarrow.") from None
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    images, items = [], []
    for n, r in enumerate(rows):
        if not r.get("image"):
            continue
        choices = list(r["choices"])
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        context = f"\nContext: {r['hint']}" if r.get("hint") else ""
        prompt = f"{r['question']}{context}\n{options}\n{MC_ANSWER}"
        items.append(Item(uid=f"scienceqa/{split}/{n}", image=len(images), question=r["question"], prompt=prompt,
                          choices=tuple(LETTERS[: len(choices)]), answer=LETTERS[int(r["answer"])]))
        images.append(r["image"]["bytes"])
    return Task("scienceqa-img", items, len(images), lambda i: Image.open(io.BytesIO(images[i])).convert("RGB"),
                cache_key=f"scienceqa-img-{split}", meta={"split": split, "source": str(root)})
