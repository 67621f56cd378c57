"""Users' own data: ``jsonl:PATH``, one object per line:
``{"image": path relative to the file, "question": str, "choices": [str, ...] (optional), "answer": str}``.

With choices, the item is asked LLaVA-style as lettered multiple choice and scored by the letter's
likelihood; without, it is a free-form short answer (use ``--mode generate``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import QAPrunerError
from .base import LETTERS, MC_ANSWER, SHORT_ANSWER, Item, Task, digest


def _check_image(path: Path, where: str) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        raise QAPrunerError(f"{where}: image '{path}' does not exist.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise QAPrunerError(f"{where}: image '{path}' cannot be read as an image ({exc.__class__.__name__}).") from None


def load_jsonl(path: str) -> Task:
    file = Path(path).expanduser()
    if not file.is_file():
        raise QAPrunerError(f"The JSONL task file '{file}' does not exist.")
    images: list[Path] = []
    index: dict[Path, int] = {}
    items: list[Item] = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QAPrunerError(f"{where} is not valid JSON ({exc.msg}).") from None
        missing = [k for k in ("image", "question", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise QAPrunerError(f"{where} lacks the string field(s) {', '.join(missing)}.")
        img = (file.parent / row["image"]).resolve()
        if img not in index:
            _check_image(img, where)
            index[img] = len(images)
            images.append(img)
        choices = row.get("choices")
        question = row["question"]
        if choices:
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices) or len(choices) > 26:
                raise QAPrunerError(f"{where}: 'choices' must be a list of at most 26 strings.")
            if row["answer"] not in choices:
                raise QAPrunerError(f"{where}: the answer '{row['answer']}' is not one of its choices.")
            options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
            prompt = f"{question}\n{options}\n{MC_ANSWER}"
            letters = tuple(LETTERS[: len(choices)])
            answer = letters[choices.index(row["answer"])]
        else:
            prompt, letters, answer = f"{question}\n{SHORT_ANSWER}", (), row["answer"]
        items.append(Item(uid=f"jsonl/{n}", image=index[img], question=question, prompt=prompt, choices=letters,
                          answer=answer))
    if not items:
        raise QAPrunerError(f"The JSONL task file '{file}' has no items.")
    stat = file.stat()
    key = "jsonl-" + digest(str(file.resolve()), str(stat.st_size), str(int(stat.st_mtime)),
                            *[f"{p}:{os.path.getmtime(p)}" for p in images])
    return Task(f"jsonl:{file}", items, len(images), lambda i: Image.open(images[i]).convert("RGB"), cache_key=key,
                meta={"source": str(file)})
