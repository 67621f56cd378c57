"""Users' own data: ``jsonl:PATH``, one object per line:
``{"image": path relative to the file, "question": str, "choices": [str, ...] (optional), "answer": str,
"scoring": "letters" | "words" (optional), "kind": str (optional: the question type, for per-type accuracy)}``.

How an item with choices is asked and scored (``scoring``; the answer must be one of the choices, and no two
choices may be equal ignoring case and surrounding spaces):

* ``"letters"`` (the default): LLaVA-style lettered multiple choice (A., B., …; at most 26 choices), scored by
  the likelihood of each letter as the next token (``--mode choice``) or by parsing the letter from the output.
* ``"words"``: the question with the short-answer instruction, as easy-VQA; the candidates are the answer words
  themselves, scored by the likelihood of each word's first token (so their first tokens must differ) or by
  finding the word in the generated output.

A line holding only ``{"scoring": ...}`` sets the default for the lines after it. Without choices, an item is
a free-form short answer (use ``--mode generate``); ``scoring`` does not apply."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import QAPrunerError
from .base import LETTERS, MC_ANSWER, SHORT_ANSWER, Item, Task, digest
from .registry import register_task

SCORINGS = ("letters", "words")


def _check_image(path: Path, where: str) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        raise QAPrunerError(f"{where}: image '{path}' does not exist.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise QAPrunerError(f"{where}: image '{path}' cannot be read as an image ({exc.__class__.__name__}).") from None


def _check_choices(choices, answer: str, scoring: str, where: str) -> tuple[str, ...]:
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise QAPrunerError(f"{where}: 'choices' must be a list of non-empty strings.")
    if scoring == "letters" and len(choices) > len(LETTERS):
        raise QAPrunerError(f"{where}: lettered 'choices' can be at most {len(LETTERS)}; use \"scoring\": \"words\".")
    choices = tuple(c.strip() for c in choices)
    seen: set[str] = set()
    for c in choices:
        if c.lower() in seen:
            raise QAPrunerError(f"{where}: the choice '{c}' appears twice (ignoring case).")
        seen.add(c.lower())
    if answer not in choices:
        raise QAPrunerError(f"{where}: the answer '{answer}' is not one of its choices.")
    return choices


@register_task("jsonl", train_split=False, takes_path=True)
def load_jsonl(path: str) -> Task:
    file = Path(path).expanduser()
    if not file.is_file():
        raise QAPrunerError(f"The JSONL task file '{file}' does not exist.")
    images: list[Path] = []
    index: dict[Path, int] = {}
    items: list[Item] = []
    default = "letters"
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QAPrunerError(f"{where} is not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise QAPrunerError(f"{where} is not a JSON object.")
        scoring = row.get("scoring", default)
        if scoring not in SCORINGS:
            raise QAPrunerError(f"{where}: 'scoring' must be 'letters' or 'words', not {scoring!r}.")
        if set(row) == {"scoring"}:
            default = scoring
            continue
        missing = [k for k in ("image", "question", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise QAPrunerError(f"{where} lacks the string field(s) {', '.join(missing)}.")
        img = (file.parent / row["image"]).resolve()
        if img not in index:
            _check_image(img, where)
            index[img] = len(images)
            images.append(img)
        question, answer, choices = row["question"], row["answer"].strip(), row.get("choices")
        if not choices:
            prompt, choices = f"{question}\n{SHORT_ANSWER}", ()
        else:
            choices = _check_choices(choices, answer, scoring, where)
            if scoring == "words":
                prompt = f"{question}\n{SHORT_ANSWER}"
            else:
                options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
                prompt = f"{question}\n{options}\n{MC_ANSWER}"
                choices, answer = tuple(LETTERS[: len(choices)]), LETTERS[choices.index(answer)]
        items.append(Item(uid=f"jsonl/{n}", image=index[img], question=question, prompt=prompt, choices=choices,
                          answer=answer, kind=str(row.get("kind", ""))))
    if not items:
        raise QAPrunerError(f"The JSONL task file '{file}' has no items.")
    stat = file.stat()
    key = "jsonl-" + digest(str(file.resolve()), str(stat.st_size), str(int(stat.st_mtime)),
                            *[f"{p}:{os.path.getmtime(p)}" for p in images])
    return Task(f"jsonl:{file}", items, len(images), lambda i: Image.open(images[i]).convert("RGB"), cache_key=key,
                meta={"source": str(file)})
