"""Where do the kept tokens lie on Fashion-MNIST images? (explains the `cls` host's collapse)

    tar -xJf docs/experiment/items.tar.xz -C docs/experiment    # the committed items are archived
    python benchmarks/kept_token_geometry.py docs/experiment/items/fashion-mnist__fp__*k0.125*.jsonl

For every items file of a compare/eval run on fashion-mnist, prints per host the mean over items of:
- garment: share of kept tokens whose 14×14 patch (of the 224-px input) has mean intensity > 0.1;
- boundary: share of kept tokens on the garment's outline (garment patch with a background 4-neighbour);
- spread: std of the kept tokens' row index + std of their column index (16×16 grid).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qapruner.tasks.fashion_mnist import _read

GRID = 16  # 224 px / 14 px patches
THRESHOLD = 0.1


def patch_means(img: np.ndarray) -> np.ndarray:
    """Mean intensity of each 14×14 patch after the 28 → 224 nearest-neighbour upscale (8×)."""
    big = np.kron(img.astype(np.float64) / 255.0, np.ones((8, 8)))
    return big.reshape(GRID, 14, GRID, 14).mean(axis=(1, 3))


def geometry(kept: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
    fg = means > THRESHOLD
    pad = np.pad(fg, 1)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    boundary = fg & ~interior
    rows, cols = kept // GRID, kept % GRID
    return float(fg.flat[kept].mean()), float(boundary.flat[kept].mean()), float(rows.std() + cols.std())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="+", type=Path, help="items JSONL files of fashion-mnist runs with kept indices")
    args = ap.parse_args()
    images, _ = _read("test")
    print(f"{'configuration':45s} {'n':>4s} {'garment':>8s} {'boundary':>9s} {'spread':>7s}")
    for path in args.items:
        rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        rows = [r for r in rows if r.get("kept")]
        if not rows:
            continue
        stats = np.array([
            geometry(np.asarray(r["kept"]), patch_means(images[int(r["uid"].rsplit("/", 1)[1])])) for r in rows
        ])
        g, b, s = stats.mean(axis=0)
        name = path.name.split("__")[1] + " " + path.name.split("__")[2]
        print(f"{name:45s} {len(rows):4d} {g:8.2f} {b:9.2f} {s:7.2f}")


if __name__ == "__main__":
    main()
