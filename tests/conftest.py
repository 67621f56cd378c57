import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
USER_CACHE = os.environ.get("QAPRUNER_CACHE")  # the testbed's converted weights and features live there


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def tiny_jsonl(tmp_path_factory):
    """A small multiple-choice JSONL task with real PNG files: colored squares."""
    from tiny_checkpoint import write_color_task

    return write_color_task(tmp_path_factory.mktemp("jsonl_task"))


@pytest.fixture(scope="module", autouse=True)
def _module_cache(request, tmp_path_factory):
    """Module-scoped fixtures run before the per-test cache below; outside testbed modules they get a private
    cache too (a quantized copy calibrated in such a fixture used to encode its features into the user's cache)."""
    if request.node.get_closest_marker("testbed"):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QAPRUNER_CACHE", str(tmp_path_factory.mktemp("module_cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Tests that do not need the real testbed get a private cache directory; testbed tests the user's."""
    if "testbed" not in request.keywords:
        monkeypatch.setenv("QAPRUNER_CACHE", str(tmp_path / "cache"))
    elif USER_CACHE is None:
        monkeypatch.delenv("QAPRUNER_CACHE", raising=False)
    else:
        monkeypatch.setenv("QAPRUNER_CACHE", USER_CACHE)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, whatever ran before it (order-independent results)."""
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
