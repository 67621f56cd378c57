"""How much of Fashion-MNIST can the frozen DINOv2-S features give at all? A linear probe on the cached features.

    python benchmarks/fashion_feature_probe.py        # ~1 min on 2 cores; needs the cached testbed features

The testbed scores ~75 % on Fashion-MNIST with every asset (docs/testbed.md); issue #14 aimed at 80 %. This
probe asks whether the vision features hold more than that. It uses only images whose features are already
cached (the train images stage 2 trained on, the test images the reports scored), so nothing is encoded:
a softmax classifier (Adam, weight decay, 300 full-batch epochs, seeded) on

* ``mean``: the mean of the 256 patch features (384 values), and
* ``mean+max``: the mean and the per-channel max (768 values),

trained on the cached train images and scored on the cached test images. Writes
benchmarks/results/fashion_feature_probe.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_testbed_adapter
from qapruner.tasks import load_task

OUT = Path(__file__).resolve().parent / "results" / "fashion_feature_probe.json"


def cached(adapter, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (mean, max) and labels of the images of ``split`` whose features are cached."""
    task = load_task("fashion-mnist", split)
    cache = FeatureCache(adapter, task)
    idx = np.flatnonzero(cache._done) if cache._feats is not None else np.array([], int)
    if len(idx) == 0:
        raise SystemExit(f"No cached Fashion-MNIST {split} features; run an eval or `qapruner train` first.")
    labels = {it.image: "ABCDEFGHIJ".index(it.answer) for it in task.items}
    feats = cache.get(idx.tolist())[0].float()
    pooled = torch.cat([feats.mean(1), feats.amax(1)], dim=1)
    return pooled, torch.tensor([labels[int(i)] for i in idx])


def probe(xtr, ytr, xte, yte, seed: int = 0) -> float:
    torch.manual_seed(seed)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return float((lin(xte).argmax(1) == yte).float().mean())


def main() -> None:
    adapter = load_testbed_adapter(projector=None)  # the features depend on the tower only
    xtr, ytr = cached(adapter, "train")
    xte, yte = cached(adapter, "test")
    d = xtr.shape[1] // 2
    result = {"train_images": len(ytr), "test_images": len(yte),
              "mean": probe(xtr[:, :d], ytr, xte[:, :d], yte), "mean+max": probe(xtr, ytr, xte, yte)}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
