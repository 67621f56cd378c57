import json

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def tiny_jsonl(tmp_path_factory):
    """A small multiple-choice JSONL task with real PNG files: colored squares."""
    root = tmp_path_factory.mktemp("jsonl_task")
    colors = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        name = list(colors)[i % 4]
        arr = np.full((40, 40, 3), 255, np.uint8)
        x, y = rng.integers(0, 20, 2)
        arr[y : y + 18, x : x + 18] = colors[name]
        Image.fromarray(arr).save(root / f"img{i}.png")
        lines.append({"image": f"img{i}.png", "question": "what color is the shape?", "choices": list(colors),
                      "answer": name})
    path = root / "task.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Tests that do not need the real testbed get a private cache directory."""
    if "testbed" not in request.keywords:
        monkeypatch.setenv("QAPRUNER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, whatever ran before it (order-independent results)."""
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
