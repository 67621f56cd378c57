"""Is what a ``shapes`` yes/no question asks readable from the frozen vision features? A per-patch linear probe.

    python benchmarks/shapes_feature_probe.py      # ~1 min on 2 cores, needs the cached testbed features
    python benchmarks/shapes_feature_probe.py --asset testbed_v5.safetensors   # read an asset's tokens instead
    python benchmarks/shapes_feature_probe.py --column [--asset FILE]   # is the column (left/right) readable?

Each of the 256 DINOv2-S patch tokens of a scene is labelled with the (colour, shape) of the object covering
its centre (the inner 70 % of the object's box) or "background"; a linear softmax classifier is trained on the
train split's 4,000 scenes (3 epochs, Adam) and tested on the test split's 1,000. A scene "contains colour X
shape Y" when >= 2 of its patches are predicted as (X, Y). Scored on the near-miss pairs the ``exists``
questions ask about (a colour or a shape of the scene, in another combination) and on the pairs present, so
both answers are measured. The result says whether a testbed that fails ``exists`` lacks the information in
its visual tokens or fails to use it. Writes benchmarks/results/shapes_feature_probe.json.

With ``--asset`` nothing is trained: each patch is classified by the nearest (cosine) of "background" and the 24
"<colour> <shape>" phrase embeddings, applied to the asset's *projected* tokens. That measures how word-like the
projector made the tokens (stage 1's per-patch term aims at exactly this); writes
benchmarks/results/shapes_token_readout_<asset>.json.

With ``--column``: a ridge regression (lambda 1e-2) from each object patch's frozen feature (or, with ``--asset``,
projected token) to its column 0..15, fitted on the first 2,000 train scenes and scored on the 1,000 test scenes
(R^2 and mean absolute error in columns). A left/right question needs the column in the tokens; writes
benchmarks/results/shapes_column_probe_<asset or dinov2>.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_testbed_adapter
from qapruner.tasks import load_task
from qapruner.tasks.scenes import COMBOS, PATCH_WORDS, patch_labels
from qapruner.tasks.shapes import scenes

def features(adapter, split: str):
    task = load_task("shapes", split)
    cache = FeatureCache(adapter, task)
    idx = list(range(task.image_count))
    cache.ensure(idx)
    return cache.get(idx)[0].float(), torch.from_numpy(patch_labels(scenes(split)))


def project(adapter, feats: torch.Tensor) -> torch.Tensor:
    """The asset's projected tokens of ``feats``, 100 scenes at a time."""
    return torch.cat([adapter.project(feats[b:b + 100]) for b in range(0, len(feats), 100)])


def readout(asset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-phrase class of each projected test patch, and the test labels."""
    from qapruner.align import word_vectors
    from qapruner.models.assets import ASSETS

    adapter = load_testbed_adapter(projector=ASSETS.get(asset, Path(asset)))
    xt, yt = features(adapter, "test")
    emb = adapter.parts.embed.weight.detach()
    unit = torch.nn.functional.normalize(word_vectors(emb, adapter.tokenizer, PATCH_WORDS), dim=-1)
    with torch.no_grad():
        tokens = project(adapter, xt)
    return (torch.nn.functional.normalize(tokens, dim=-1) @ unit.T).argmax(-1), yt


def _stem(asset: str) -> str:
    """``v7`` or ``.../testbed_v7.safetensors`` -> ``testbed_v7`` (the result files' label)."""
    from qapruner.models.assets import ASSETS

    return Path(ASSETS.get(asset, Path(asset))).stem


def column_probe(asset: str | None) -> dict:
    from qapruner.models.assets import ASSETS

    adapter = load_testbed_adapter(projector=ASSETS.get(asset, Path(asset)) if asset else None)
    (x, y), (xt, yt) = features(adapter, "train"), features(adapter, "test")
    x, y = x[:2000], y[:2000]
    if asset:
        with torch.no_grad():
            x, xt = project(adapter, x), project(adapter, xt)
    col = (torch.arange(x.shape[1]) % 16).double()

    def design(v, lab):  # object patches, with a bias column
        rows = v[lab > 0].double()
        return torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1), col.expand(len(v), -1)[lab > 0]

    (X, c), (Xt, ct) = design(x, y), design(xt, yt)
    w = torch.linalg.solve(X.T @ X + 1e-2 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ c)
    err = Xt @ w - ct
    out = {"object patches (test)": len(ct), "column R^2": round(1 - (err ** 2).mean().item() / ct.var().item(), 3),
           "column mean abs error (patches)": round(err.abs().mean().item(), 2)}
    name = f"shapes_column_probe_{_stem(asset) if asset else 'dinov2'}.json"
    (Path(__file__).resolve().parent / "results" / name).write_text(json.dumps(out, indent=1) + "\n")
    print(out)
    return out


def main(asset: str | None = None) -> dict:
    torch.manual_seed(0)
    if asset:
        pred, yt = readout(asset)
        return score(pred, yt, f"shapes_token_readout_{_stem(asset)}.json")
    adapter = load_testbed_adapter(projector=None)  # only the frozen vision tower is used
    (x, y), (xt, yt) = features(adapter, "train"), features(adapter, "test")
    mu, sd = x.mean((0, 1)), x.std((0, 1)) + 1e-6
    X, Y = ((x - mu) / sd).reshape(-1, x.shape[-1]), y.reshape(-1)
    probe = torch.nn.Linear(X.shape[1], 1 + len(COMBOS))
    opt = torch.optim.Adam(probe.parameters(), 1e-3)
    for _ in range(3):
        perm = torch.randperm(len(X))
        for b in range(0, len(X), 4096):
            i = perm[b:b + 4096]
            loss = torch.nn.functional.cross_entropy(probe(X[i]), Y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = probe(((xt - mu) / sd)).argmax(-1)
    return score(pred, yt, "shapes_feature_probe.json")


def score(pred: torch.Tensor, yt: torch.Tensor, name: str) -> dict:
    obj = yt > 0
    hits = {"present": [0, 0], "near-miss absent": [0, 0]}
    for i, s in enumerate(scenes("test")):
        counts = torch.bincount(pred[i], minlength=1 + len(COMBOS))
        present = {(o.color, o.shape) for o in s.objects}
        for k, (c, sh) in enumerate(COMBOS, start=1):
            near = any(o.color == c or o.shape == sh for o in s.objects)
            kind = "present" if (c, sh) in present else "near-miss absent" if near else None
            if kind:
                hits[kind][0] += int((counts[k] >= 2).item() == (kind == "present"))
                hits[kind][1] += 1
    out = {"patch accuracy (object patches, colour x shape of 24)": round((pred[obj] == yt[obj]).float().mean().item(), 3),
           "patch accuracy (background)": round((pred[~obj] == 0).float().mean().item(), 3),
           **{f"scene exists, {k} (n={n})": round(r / n, 3) for k, (r, n) in hits.items()}}
    out["scene exists, balanced"] = round(np.mean([r / n for r, n in hits.values()]), 3)
    path = Path(__file__).resolve().parent / "results" / name
    path.write_text(json.dumps(out, indent=1) + "\n")
    for k, v in out.items():
        print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asset", help="read this testbed asset's projected tokens (name or .safetensors)")
    parser.add_argument("--column", action="store_true", help="probe the column of object patches instead")
    args = parser.parse_args()
    column_probe(args.asset) if args.column else main(args.asset)
