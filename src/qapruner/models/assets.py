"""The testbed's committed projector + LoRA assets, by name (``--model testbed:v1``), and the default.

    testbed        = testbed:v7  (the default: word-like visual tokens per patch that keep their column, trained
                                  v2 -> v5 -> v6 -> v7 with the image-grounded ``shapes`` task, docs/testbed.md)
    testbed:v2     = the first asset trained with ``shapes``; the reports in docs/*-v2 used it
    testbed:v1     = the first asset (easy-VQA + Fashion-MNIST); every report made before v2 used it
    testbed:PATH   = any other asset file (e.g. a training checkpoint)

Run configurations store the canonical spec (``testbed:v7``), so results of different assets never mix.
"""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
ASSETS = {name: ASSET_DIR / f"testbed_{name}.safetensors" for name in ("v1", "v2", "v7")}
DEFAULT_ASSET = "v7"


def canonical_model(spec: str) -> str:
    """``testbed`` -> ``testbed:<default asset>``; every other spec unchanged."""
    return f"testbed:{DEFAULT_ASSET}" if spec == "testbed" else spec


def asset_file(spec: str) -> Path | None:
    """The asset file of a ``testbed`` / ``testbed:NAME`` / ``testbed:PATH`` spec; None for other models."""
    if spec == "testbed":
        return ASSETS[DEFAULT_ASSET]
    if not spec.startswith("testbed:"):
        return None
    rest = spec[len("testbed:"):]
    return ASSETS.get(rest, Path(rest))
