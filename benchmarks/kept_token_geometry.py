"""Where do the kept tokens lie? Fashion-MNIST (explains the `cls` host's collapse) and shapes scenes.

    tar -xJf docs/experiment/items.tar.xz -C docs/experiment    # the committed items are archived
    python benchmarks/kept_token_geometry.py docs/experiment/items/fashion-mnist__fp__*k0.125*.jsonl
    python benchmarks/kept_token_geometry.py docs/experiment-v7/items/shapes__*k0.125*.jsonl

For every items file of a compare/eval run, prints per configuration the mean over items of:
- fashion-mnist: garment, the share of kept tokens whose 14×14 patch (of the 224-px input) has mean intensity
  > 0.1; boundary, the share on the garment's outline (garment patch with a background 4-neighbour);
- shapes: object, the share of kept tokens whose patch centre lies inside an object's box; covered, the share
  of the scene's objects with at least one kept token inside their box;
- spread: std of the kept tokens' row index + std of their column index (16×16 grid).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from qapruner.tasks import load_task
from qapruner.tasks.fashion_mnist import _read
from qapruner.tasks.scenes import SIZE
from qapruner.tasks.shapes import scenes

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


def shapes_geometry(kept: np.ndarray, scene) -> tuple[float, float, float]:
    step = SIZE // GRID
    px, py = (kept % GRID) * step + step // 2, (kept // GRID) * step + step // 2
    inside = np.array([(np.abs(px - o.cx) <= o.r) & (np.abs(py - o.cy) <= o.r) for o in scene.objects])
    rows, cols = kept // GRID, kept % GRID
    return float(inside.any(0).mean()), float(inside.any(1).mean()), float(rows.std() + cols.std())


@functools.cache
def shapes_test() -> tuple[list, list]:
    """The shapes test items and scenes (built once for all the files read)."""
    return load_task("shapes", "test").items, scenes("test")


def measure(path: Path) -> tuple[int, np.ndarray]:
    """(items, mean of the per-item statistics) of one items file."""
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    rows = [r for r in rows if r.get("kept")]
    if path.name.startswith("shapes"):
        items, all_scenes = shapes_test()
        stats = [shapes_geometry(np.asarray(r["kept"]), all_scenes[items[int(r["uid"].rsplit("/", 1)[1])].image])
                 for r in rows]
    else:
        images, _ = _read("test")
        stats = [geometry(np.asarray(r["kept"]), patch_means(images[int(r["uid"].rsplit("/", 1)[1])])) for r in rows]
    return len(rows), np.array(stats).mean(axis=0) if stats else np.zeros(3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="+", type=Path,
                    help="items JSONL files of one task's runs (fashion-mnist or shapes) with kept indices")
    args = ap.parse_args()
    shapes = args.items[0].name.startswith("shapes")
    head = ("object", "covered") if shapes else ("garment", "boundary")
    print(f"{'configuration':45s} {'n':>4s} {head[0]:>8s} {head[1]:>9s} {'spread':>7s}")
    for path in args.items:
        n, (a, b, spread) = measure(path)
        if n:
            name = path.name.split("__")[1] + " " + path.name.split("__")[2]
            print(f"{name:45s} {n:4d} {a:8.2f} {b:9.2f} {spread:7.2f}")

if __name__ == "__main__":
    main()
