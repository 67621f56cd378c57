"""Seeded scenes for the ``shapes`` task: a pastel background with 1-3 solid shapes, in the style of easy-VQA.

Unlike easy-VQA (one 64 px shape per image), a scene holds up to three objects of distinct colours at random
positions and sizes, rendered natively at 224 px (the testbed's input size, 16 x 16 patches of 14 px), so
questions about several objects, their number and their left/right order can be asked. Scene ``i`` of a split is
a pure function of (split seed, i): images are drawn lazily and identically on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {  # the eight easy-VQA colour words, as solid RGB
    "black": (20, 20, 20), "blue": (30, 70, 220), "brown": (130, 80, 30), "gray": (128, 128, 128),
    "green": (30, 160, 50), "red": (220, 30, 30), "teal": (0, 140, 140), "yellow": (235, 210, 20),
}
SHAPES = ("circle", "rectangle", "triangle")
SIZE = 224
MIN_GAP = 6  # px between the bounding boxes of two objects


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    cx: int      # centre, px
    cy: int
    r: int       # half the bounding-box side, px


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    objects: tuple[Obj, ...]


def make_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    """``n_objects`` non-overlapping objects of distinct colours (rejection-sampled positions)."""
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    colors = rng.choice(sorted(COLORS), size=n_objects, replace=False)
    objects: list[Obj] = []
    for color in colors:
        for _ in range(1000):
            r = int(rng.integers(18, 36))
            cx, cy = (int(v) for v in rng.integers(r + 4, SIZE - r - 4, size=2))
            if all(max(abs(cx - o.cx), abs(cy - o.cy)) >= r + o.r + MIN_GAP for o in objects):
                break
        else:  # pragma: no cover - three objects of <= 70 px always fit in 224 px
            raise RuntimeError("could not place the objects of a scene")
        objects.append(Obj(str(rng.choice(SHAPES)), str(color), cx, cy, r))
    return Scene(background, tuple(objects))


def render(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        box = (o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "rectangle":  # easy-VQA's rectangles are not always square: vary the aspect
            h = o.r if (o.cx + o.cy) % 2 else int(o.r * 0.6)
            draw.rectangle((o.cx - o.r, o.cy - h, o.cx + o.r, o.cy + h), fill=fill)
        else:
            draw.polygon([(o.cx, o.cy - o.r), (o.cx - o.r, o.cy + o.r), (o.cx + o.r, o.cy + o.r)], fill=fill)
    return img


COMBOS = tuple((c, s) for c in sorted(COLORS) for s in SHAPES)  # patch classes 1..24 (0 = background)
PATCH_WORDS = ("background",) + tuple(f"{c} {s}" for c, s in COMBOS)  # the words of each patch class


def patch_labels(scenes: list[Scene], grid: int = 16, inner: float = 0.7, edge: int = 0) -> np.ndarray:
    """(len(scenes), grid * grid) patch classes, row-major like the vision tower's tokens: 1 + index into
    ``COMBOS`` for a patch whose centre lies in the inner ``inner`` fraction of an object's box, 0 for
    background, and ``edge`` for a patch centre in the rest of the box (0 counts it as background; -1 marks it
    as ambiguous, to be ignored by a loss)."""
    step = SIZE // grid
    ys, xs = np.mgrid[0:grid, 0:grid]
    px, py = xs.ravel() * step + step // 2, ys.ravel() * step + step // 2
    lab = np.zeros((len(scenes), grid * grid), np.int64)
    for i, s in enumerate(scenes):
        for o in s.objects:
            dx, dy = abs(px - o.cx), abs(py - o.cy)
            lab[i, (dx <= o.r) & (dy <= o.r)] = edge
            lab[i, (dx <= o.r * inner) & (dy <= o.r * inner)] = 1 + COMBOS.index((o.color, o.shape))
    return lab
