"""qapruner's tasks as lmms-eval documents, and their scoring: the functions the task YAMLs in
``qapruner/lmms/tasks/`` name with ``!function qapruner.lmms.docs.NAME``.

The YAMLs read a one-line stub file (lmms-eval needs a dataset to open) and ``process_docs`` replaces it with
the items of qapruner's own task loader: the same items, prompts, answers and images as ``qapruner eval``, from
the same local files (the easy-vqa pip package, the Debian Fashion-MNIST files, the generated shapes, a JSONL
file), with no hub access. Environment variables choose what ``qapruner eval`` chooses with options:

* ``QAPRUNER_LMMS_LIMIT=N`` / ``QAPRUNER_LMMS_SEED=S``: the seeded, answer-stratified subset of
  ``qapruner eval --limit N --seed S`` (lmms-eval's own ``--limit N`` takes the first N items instead);
* ``QAPRUNER_LMMS_JSONL=PATH``: the file of the ``qapruner_jsonl`` tasks (``--task jsonl:PATH``).

Scoring: ``process_generated`` is ``qapruner eval --mode generate`` (``parse_generated`` on the greedy text,
then the normalised comparison); the ``*_mc`` tasks are lmms-eval ``multiple_choice`` tasks (see
docs/lmms_eval.md for when they equal ``--mode choice``).
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import QAPrunerError
from ..eval.scoring import normalize_answer, parse_generated
from ..tasks import load_task
from ..tasks.base import Task

ENV_LIMIT, ENV_SEED, ENV_JSONL = "QAPRUNER_LMMS_LIMIT", "QAPRUNER_LMMS_SEED", "QAPRUNER_LMMS_JSONL"


def selection() -> tuple[int | None, int]:
    """(limit, seed) from the environment, as ``qapruner eval --limit --seed`` (None = every item)."""
    limit, seed = os.environ.get(ENV_LIMIT, "").strip(), os.environ.get(ENV_SEED, "0").strip() or "0"
    if limit and not limit.isdigit() or limit == "0":
        raise QAPrunerError(f"{ENV_LIMIT} must be a positive number of items, got {limit!r}.")
    if not seed.isdigit():
        raise QAPrunerError(f"{ENV_SEED} must be a non-negative integer, got {seed!r}.")
    return (int(limit) if limit else None), int(seed)


@lru_cache(maxsize=8)
def _task(name: str, limit: int | None, seed: int) -> Task:
    return load_task(name).subset(limit, seed)


def qapruner_task(name: str) -> Task:
    """The qapruner task ``name`` with the subset the environment selects (cached per process)."""
    return _task(name, *selection())


def jsonl_name() -> str:
    path = os.environ.get(ENV_JSONL, "").strip()
    if not path:
        raise QAPrunerError(f"The qapruner_jsonl tasks read the file named by {ENV_JSONL}; "
                            f"set {ENV_JSONL}=/path/to/task.jsonl (the format of qapruner's --task jsonl:PATH).")
    return f"jsonl:{os.path.abspath(os.path.expanduser(path))}"


def records(name: str) -> list[dict]:
    """One lmms-eval document per item of qapruner task ``name``, in qapruner's item order."""
    return [{"uid": it.uid, "qapruner_task": name, "image": it.image, "question": it.question, "prompt": it.prompt,
             "choices": list(it.choices), "answer": it.answer, "kind": it.kind} for it in qapruner_task(name).items]


def documents(name: str, multiple_choice: bool = False):
    import datasets

    rows = records(name)
    if multiple_choice:
        free = [r["uid"] for r in rows if not r["choices"]]
        if free:
            raise QAPrunerError(f"Item {free[0]} of {name} has no candidate answers, so it cannot be a "
                                "multiple_choice document; use the generate task (without _mc) for free-form items.")
    features = datasets.Features({
        "uid": datasets.Value("string"), "qapruner_task": datasets.Value("string"), "image": datasets.Value("int64"),
        "question": datasets.Value("string"), "prompt": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("string"),
        "kind": datasets.Value("string")})
    return datasets.Dataset.from_list(rows, features=features)


# ---- process_docs: the stub dataset -> the task's documents ----------------------------------------------
def easy_vqa(dataset):
    return documents("easy-vqa")


def easy_vqa_mc(dataset):
    return documents("easy-vqa", multiple_choice=True)


def fashion_mnist(dataset):
    return documents("fashion-mnist")


def fashion_mnist_mc(dataset):
    return documents("fashion-mnist", multiple_choice=True)


def shapes(dataset):
    return documents("shapes")


def shapes_mc(dataset):
    return documents("shapes", multiple_choice=True)


def jsonl(dataset):
    return documents(jsonl_name())


def jsonl_mc(dataset):
    return documents(jsonl_name(), multiple_choice=True)


# ---- document -> model input -------------------------------------------------------------------------------
def doc_to_visual(doc: dict) -> list:
    """The item's image as a PIL image (any lmms-eval model can evaluate these tasks)."""
    return [qapruner_task(doc["qapruner_task"]).load_image(int(doc["image"]))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    """The user turn's text exactly as qapruner asks it (question + options + answer instruction)."""
    return doc["prompt"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def doc_to_target(doc: dict) -> int:
    return list(doc["choices"]).index(doc["answer"])


# ---- scoring ---------------------------------------------------------------------------------------------
def prediction(doc: dict, text: str) -> str:
    """``qapruner eval --mode generate``'s answer for a generated ``text``."""
    return parse_generated(text, tuple(doc["choices"]))


def process_generated(doc: dict, results: list[str]) -> dict:
    pred = prediction(doc, results[0] if results else "")
    return {"accuracy": float(normalize_answer(pred) == normalize_answer(doc["answer"]))}
