"""easy-VQA (pip package ``easy-vqa``): 64×64 shape images, 13 one-word answers."""

from __future__ import annotations

from PIL import Image

from ..errors import QAPrunerError
from .registry import register_task
from .base import SHORT_ANSWER, Item, Task


def _module():
    try:
        import easy_vqa
    except ImportError as exc:
        raise QAPrunerError("The easy-VQA dataset is not installed; run: pip install easy-vqa==1.0") from exc
    return easy_vqa


def _kind(answer: str) -> str:
    """easy-VQA's question type follows from its answer: yes/no, a shape word or a colour word."""
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in ("circle", "rectangle", "triangle") else "color"


@register_task("easy-vqa", train_split=True)
def load_easy_vqa(split: str = "test") -> Task:
    ev = _module()
    questions, answers, image_ids = ev.get_test_questions() if split == "test" else ev.get_train_questions()
    paths = ev.get_test_image_paths() if split == "test" else ev.get_train_image_paths()
    ordered = [paths[i] for i in sorted(paths)]
    position = {img_id: n for n, img_id in enumerate(sorted(paths))}
    choices = tuple(sorted(ev.get_answers()))
    items = [
        Item(uid=f"easy-vqa/{split}/{n}", image=position[img], question=q, prompt=f"{q}\n{SHORT_ANSWER}",
             choices=choices, answer=a, kind=_kind(a))
        for n, (q, a, img) in enumerate(zip(questions, answers, image_ids))
    ]
    return Task(f"easy-vqa", items, len(ordered), lambda i: Image.open(ordered[i]).convert("RGB"),
                cache_key=f"easy-vqa-{split}", meta={"split": split, "source": "pip easy-vqa==1.0"})
