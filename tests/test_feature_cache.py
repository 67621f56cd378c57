"""The vision-feature cache (models/features.py) shared by several processes: an encoder re-reads what another
finished before encoding, waits for another encoder, and the flags on disk are never half written."""

import threading
import time

import numpy as np
import torch

from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_model
from qapruner.tasks import load_task


def _counting(adapter):
    """The adapter, with every image it encodes counted."""
    calls = []
    encode = adapter.encode

    def counted(pixels):
        calls.append(len(pixels))
        return encode(pixels)

    adapter.encode = counted
    return calls


def test_a_second_cache_reads_what_another_encoded_instead_of_encoding_again(tiny_llava_dir, tiny_jsonl):
    adapter = load_model(str(tiny_llava_dir), device=torch.device("cpu"))
    task = load_task(f"jsonl:{tiny_jsonl}")
    calls = _counting(adapter)
    late = FeatureCache(adapter, task)  # opened before anything is cached: it knows nothing yet
    first = FeatureCache(adapter, task)
    feats, cls = first.get([0, 1, 2])
    assert sum(calls) == 3
    again, again_cls = late.get([0, 1, 2])  # another "process": re-reads the flags, encodes nothing
    assert sum(calls) == 3
    assert torch.equal(again, feats) and torch.equal(again_cls, cls)
    late.get([3])
    assert sum(calls) == 4 and bool(np.load(first.dir / "done.npy")[[0, 1, 2, 3]].all())
    assert not list(first.dir.glob("done.*.npy"))  # the temporary flag files were renamed into place


def test_an_encoder_waits_for_the_one_holding_the_lock(tiny_llava_dir, tiny_jsonl):
    import fcntl

    adapter = load_model(str(tiny_llava_dir), device=torch.device("cpu"))
    task = load_task(f"jsonl:{tiny_jsonl}")
    calls = _counting(adapter)
    cache = FeatureCache(adapter, task)
    with open(cache.dir / "encode.lock", "a") as held:  # another process encoding this directory
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=cache.get, args=([5],))
        worker.start()
        time.sleep(0.5)
        assert calls == [] and worker.is_alive()
    worker.join(timeout=60)
    assert not worker.is_alive() and calls == [1]
